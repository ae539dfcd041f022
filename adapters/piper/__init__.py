"""Piper (VITS, ONNX) neural speech on the CPU: the local default voice."""
