"""Running models: from the manifest's entries to tiles through ONNX Runtime.

Owns: loading, verifying and warming each model (``runtime``), which numeric precision runs
(``precision``), the ONNX Runtime session behind a small engine interface (``engine``), the
per-model queue and batcher (``scheduler``) and one image's tiles through it (``pipeline``). A
change of runtime, device, batching or tile policy stays in this folder.
"""
