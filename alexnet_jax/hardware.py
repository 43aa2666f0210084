"""One table of the hardware this project knows: per-chip memory, peak FLOP
rates, and the cluster presets (one device's train step, two link classes)
that `plan` projects onto. Every figure names its source.
"""

import dataclasses

# Per-chip HBM, keyed by `device.device_kind`: TPUs from the Cloud TPU
# system architecture pages; GPUs as the GPU reports it (XLA's target
# descriptions in alexnet_jax/gpu_targets, `device_memory_size`).
HBM_BYTES = {
    'TPU v4': 32 * 2**30,
    'TPU v5 lite': 16 * 2**30,  # v5e
    'TPU v5': 95 * 10**9,  # v5p
    'TPU v6 lite': 32 * 2**30,  # v6e (Trillium)
    'NVIDIA A100-SXM4-80GB': 85_100_068_864,
    'NVIDIA H100 80GB HBM3': 84_942_979_072,
    'NVIDIA H200 141GB HBM3e': 151_397_597_184,
}


# The share of a GPU's memory JAX's allocator takes (it preallocates 75% by
# default; XLA_PYTHON_CLIENT_MEM_FRACTION changes it): what a train step
# may use on a GPU. A TPU's whole HBM is JAX's.
GPU_ALLOCATOR_FRACTION = 0.75


def usable_bytes(device_kind: str, platform: str) -> int | None:
  """Memory a program may use on one device under JAX's defaults, or None
  where the device's memory is not in the table."""
  hbm = HBM_BYTES.get(device_kind)
  if hbm is None:
    return None
  return int(hbm * GPU_ALLOCATOR_FRACTION) if platform == 'gpu' else hbm


UPDATE_TRAFFIC = 5  # Bytes moved per parameter byte: read w, g, v; write w, v.


IMAGENET_TRAIN = 1_281_167


@dataclasses.dataclass(frozen=True)
class Link:
  gbytes_per_s: float  # What one device receives at, each direction.
  latency_s: float  # Per ring step.


@dataclasses.dataclass(frozen=True)
class Hardware:
  """A cluster: one device's speed, its memory, and two link classes."""
  name: str
  devices_per_node: int
  intra: Link
  inter: Link
  hbm_gbytes_per_s: float
  step_seconds: float  # One device's train step, measured or published ...
  step_batch: int  # ... at this batch,
  step_variant: str  # ... for this network.
  sources: str


# One K20 (OWT, arXiv:1404.5997, table 1): 98.05 h for 90 epochs of
# ImageNet at batch 128 on one GPU, the one-tower net.
_K20_STEP = 98.05 * 3600 / (90 * IMAGENET_TRAIN / 128)


# The paper net's train step at batch 128 on one device, from the cost
# model (tests/test_plan.py keeps these equal to it): FLOPs, and parameter
# bytes for the update.
PAPER_STEP_FLOPS = 529_358_143_488


PAPER_PARAM_BYTES = 243_860_896


def _assumed_step(peak_flops: float, share: float,
                  hbm_gbytes_per_s: float) -> float:
  """One device's paper-net step at batch 128, at `share` of its peak."""
  update = UPDATE_TRAFFIC * PAPER_PARAM_BYTES / (hbm_gbytes_per_s * 1e9)
  return PAPER_STEP_FLOPS / (share * peak_flops) + update


HARDWARE = {
    'paper_gtx580': Hardware(
        'paper_gtx580', devices_per_node=2,
        intra=Link(8.0, 10e-6), inter=Link(8.0, 10e-6),
        hbm_gbytes_per_s=192.4,
        # No single-GPU time was published: the K20's published step,
        # scaled by the two GPUs' datasheet single-precision peaks.
        step_seconds=_K20_STEP * 3.52 / 1.581, step_batch=128,
        step_variant='owt',
        sources='GTX 580 datasheet: 1.581 TFLOP/s fp32, 192.4 GB/s; PCIe 2.0 '
        'x16: 8 GB/s each way; one-GPU step: the K20 step (OWT) scaled by '
        'the peak FLOP/s ratio 3.52/1.581 (an assumption, not a '
        'measurement); latency 10 us per transfer (typical PCIe peer copy).'),
    'owt_k20': Hardware(
        'owt_k20', devices_per_node=8,
        intra=Link(8.0, 10e-6), inter=Link(8.0, 10e-6),
        hbm_gbytes_per_s=208.0, step_seconds=_K20_STEP, step_batch=128,
        step_variant='owt',
        sources='Tesla K20 datasheet: 3.52 TFLOP/s fp32, 208 GB/s, PCIe 2.0 '
        'x16 (8 GB/s each way); one-GPU step: OWT (arXiv:1404.5997) 98.05 '
        'h / 90 epochs at batch 128 = 0.392 s; latency 10 us per transfer '
        '(typical PCIe peer copy).'),
    'h100_sxm8': Hardware(
        'h100_sxm8', devices_per_node=8,
        intra=Link(450.0, 5e-6), inter=Link(50.0, 10e-6),
        hbm_gbytes_per_s=3350.0,
        # Not measured yet: an assumed 30% of the dense TF32 peak.
        step_seconds=_assumed_step(495e12, 0.30, 3350.0),
        step_batch=128, step_variant='paper',
        sources='H100 SXM datasheet: 495 TFLOP/s dense TF32, 3.35 TB/s HBM3, '
        'NVLink 4 900 GB/s (450 each way); 400 Gb/s (50 GB/s) ConnectX-7 '
        'per GPU across nodes; one-GPU step: ASSUMED 30% of TF32 peak, no '
        'measurement exists (pass --step_seconds with a measured one); '
        'latency 5 us NVLink, 10 us network per ring step (typical NCCL).'),
    'h200_sxm8': Hardware(
        'h200_sxm8', devices_per_node=8,
        intra=Link(450.0, 5e-6), inter=Link(50.0, 10e-6),
        hbm_gbytes_per_s=4800.0,
        step_seconds=_assumed_step(495e12, 0.30, 4800.0),
        step_batch=128, step_variant='paper',
        sources='H200 SXM datasheet: 495 TFLOP/s dense TF32 (as H100), '
        '4.8 TB/s HBM3e, NVLink 4 900 GB/s (450 each way); 400 Gb/s (50 '
        'GB/s) ConnectX-7 per GPU across nodes; one-GPU step: ASSUMED 30% '
        'of TF32 peak, no measurement exists; latency 5 us NVLink, 10 us '
        'network per ring step (typical NCCL).'),
    'a100_sxm8': Hardware(
        'a100_sxm8', devices_per_node=8,
        intra=Link(300.0, 5e-6), inter=Link(25.0, 10e-6),
        hbm_gbytes_per_s=2039.0,
        step_seconds=_assumed_step(156e12, 0.30, 2039.0),
        step_batch=128, step_variant='paper',
        sources='A100 SXM4 80GB datasheet: 156 TFLOP/s dense TF32, 2.039 '
        'TB/s HBM2e, NVLink 3 600 GB/s (300 each way); 200 Gb/s (25 GB/s) '
        'HDR InfiniBand per GPU across nodes; one-GPU step: ASSUMED 30% of '
        'TF32 peak, no measurement exists; latency 5 us NVLink, 10 us '
        'network per ring step (typical NCCL).'),
    # A slice is one ICI domain (a 2-D torus up to 16x16): hosts are joined
    # by the same links as the chips of one host, so the two classes here
    # are a ring along one torus dimension (the inner mesh axis, within a
    # host) and a collective over both dimensions (every wider group).
    'tpu_v5e': Hardware(
        'tpu_v5e', devices_per_node=4,
        intra=Link(100.0, 1e-6), inter=Link(200.0, 1e-6),
        hbm_gbytes_per_s=819.0,
        # Not measured: an assumed 30% of the bf16 peak (TPUs run float32
        # matmuls and convolutions as bf16 passes at default precision).
        step_seconds=_assumed_step(197e12, 0.30, 819.0),
        step_batch=128, step_variant='paper',
        sources='Cloud TPU v5e system architecture page: 197 TFLOP/s bf16, '
        '819 GB/s HBM2, 400 GB/s bidirectional ICI per chip over 4 ports '
        '(50 GB/s each way per port), 2-D torus up to 256 chips, 4 chips '
        'per host in the slices `jax.experimental.topologies` describes; a '
        'ring along one dimension uses 2 ports (100 GB/s received), a '
        'collective over both dimensions all 4 (200 GB/s); one-chip step: '
        'ASSUMED 30% of the bf16 peak, no measurement exists; latency 1 us '
        'per ring step (assumed; not on the datasheet).'),
}


# `device.device_kind` of a compiled program's devices -> its preset.
PRESET_OF_DEVICE_KIND = {'TPU v5 lite': 'tpu_v5e',
                         'NVIDIA A100-SXM4-80GB': 'a100_sxm8',
                         'NVIDIA H100 80GB HBM3': 'h100_sxm8',
                         'NVIDIA H200 141GB HBM3e': 'h200_sxm8'}


# A GPU preset -> the GPU of `aot.GPU_TARGETS` its nodes compile for.
GPU_TARGET_OF_PRESET = {'a100_sxm8': 'a100', 'h100_sxm8': 'h100',
                        'h200_sxm8': 'h200'}


# Dense peak TFLOP/s per device at the compute dtype.
KNOWN_PEAKS = {('NVIDIA H100 80GB HBM3', 'bfloat16'): 989.0,
               ('NVIDIA H100 80GB HBM3', 'float32'): 67.0,
               ('NVIDIA H200', 'bfloat16'): 989.0,
               ('NVIDIA H200', 'float32'): 67.0,
               ('NVIDIA H200 141GB HBM3e', 'bfloat16'): 989.0,
               ('NVIDIA H200 141GB HBM3e', 'float32'): 67.0}
