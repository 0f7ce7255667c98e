"""The HTTP service: FastAPI routes, admission, the per-model batching queues and ONNX Runtime
engines, built on ``restore.core``; ``python -m restore.service`` serves it."""
