"""Python client for the restore service (httpx only: no numpy, torch or onnxruntime).

    from restore.client import Client
    with Client("http://localhost:8000", api_key=None) as client:
        clean = client.denoise("photo.jpg", sigma="auto")
        edges = client.edges("photo.jpg", thin=True)
        big = client.process("derain", "huge.tif", progress=lambda job: print(job.done, "/", job.total))

``AsyncClient`` has the same methods, awaitable. Errors: restore.client.errors (one class per status).
"""

from restore.client import _errors as errors
from restore.client._base import OPERATIONS, Job
from restore.client._client import AsyncClient, Client
from restore.client._errors import ConnectionFailed, JobCancelled, ProblemError, RestoreError

__all__ = ["OPERATIONS", "AsyncClient", "Client", "ConnectionFailed", "Job", "JobCancelled", "ProblemError", "RestoreError", "errors"]
