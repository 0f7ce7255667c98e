"""The ground floor below the service and the tooling: what a tile size, an image and a manifest
entry mean, as plain functions on numpy arrays and integers. Nothing here knows HTTP, settings,
ONNX Runtime or PyTorch, so the service, the export and the evaluations all measure with one rule."""
