"""One table of the hardware this project knows: per-chip memory, peak FLOP
rates, and the cluster presets (one device's train step, two link classes)
that `plan` projects onto. Every figure names its source.
"""

import dataclasses


# Per-chip HBM from the vendors' datasheets (Cloud TPU system architecture
# pages; NVIDIA H100 SXM datasheet), keyed by `device.device_kind`.
HBM_BYTES = {
    'TPU v4': 32 * 2**30,
    'TPU v5 lite': 16 * 2**30,  # v5e
    'TPU v5': 95 * 10**9,  # v5p
    'TPU v6 lite': 32 * 2**30,  # v6e (Trillium)
    'NVIDIA H100 80GB HBM3': 80 * 10**9,
}


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
                         'NVIDIA H100 80GB HBM3': 'h100_sxm8'}


# Dense peak TFLOP/s per device at the compute dtype.
KNOWN_PEAKS = {('NVIDIA H100 80GB HBM3', 'bfloat16'): 989.0,
               ('NVIDIA H100 80GB HBM3', 'float32'): 67.0,
               ('NVIDIA H200', 'bfloat16'): 989.0,
               ('NVIDIA H200', 'float32'): 67.0}
