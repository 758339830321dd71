"""Task metrics, size/latency measurement."""
