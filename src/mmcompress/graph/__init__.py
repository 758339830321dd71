"""Storage formats, ONNX export and runtime."""
