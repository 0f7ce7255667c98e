"""The HTTP service, built on ``restore.core``; ``python -m restore.service`` serves it.

    __main__, app      the process and the wiring (settings -> runtime -> routes -> middleware)
    server, middleware the HTTP edge: uvicorn, connection limits, request ids and access logs
    ray_serve          the same app as Ray Serve replicas
    api/               routes and their shared dependencies
    limits/            uploads, admission, budgets, memory
    images/            codecs, metadata, format negotiation
    inference/         runtime, precision, scheduler, pipeline, engine
    jobs               the job store behind /v1/jobs
    settings, errors, types, logs, metrics   one settings object, one exception tree, the vocabulary,
                                             JSON logs and Prometheus metrics

A request goes api -> limits -> images (decode) -> inference (restore.core.tiling, scheduler,
engine) -> images (encode) -> api; docs/architecture.md draws it.
"""
