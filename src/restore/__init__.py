"""The restore package: image restoration over HTTP.

    restore.core     the ground floor: tiling plans, multi-scale resizing, edge thinning, the
                     noise-level estimate, the manifest model; numpy and Pillow, no HTTP
    restore.service  the HTTP service (FastAPI, ONNX Runtime) built on restore.core
    restore.client   the Python client and the ``restore`` command (httpx only; imports neither)
"""
