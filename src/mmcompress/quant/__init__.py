"""Quantization: pure primitives, integer-storage modules and the `quantize` verb."""
