"""The model back ends: loading a classifier (``infer``), the built-in musicnn port and its native
kernel, and the speed-ups for transformers models (attention, feature encoder, filterbank)."""
