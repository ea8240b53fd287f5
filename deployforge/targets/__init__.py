"""Stage 4: artifacts for deployment runtimes (ONNX for onnxruntime, Core ML for Apple devices)."""
