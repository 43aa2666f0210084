"""The input pipeline: sources, decode, augment (host), device, iterators,
prepare; `device` never imports TensorFlow."""
