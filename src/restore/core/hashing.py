"""SHA-256 of a file: the manifest's checksum of each model file, checked by the service before it
loads one and written by the export that made it."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex digest of the file's bytes, read in 1 MiB chunks (model files reach hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
