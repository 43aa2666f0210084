"""The input pipeline: sources, decoding, host and device augmentation."""
