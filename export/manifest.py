"""Read and write ``models/onnx/manifest.json``, the one list of the models the repository ships.

Shape::

    {"models": [{"name": ..., "task": ..., "file": ..., "sha256": ..., "version": ...,
                 "channels": 1 | 3, "sigma": float | null, "overlap": int, "multiple": int,
                 "default": bool, "provenance": {...}, "metrics": {...}}, ...]}

``file`` is relative to the manifest's folder. Entries stay sorted by name so diffs are stable;
duplicate names are an error, never silently merged. Writing goes through a temporary file and a
rename so a crash cannot leave half a manifest.

Several tools write this one file (each model's export, the evaluations), sometimes at the same
time: writers should go through ``update_manifest``, which re-reads the file and applies their
change under an exclusive lock, so a long job never writes back a stale copy over another's entry.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = [
    "MANIFEST_NAME",
    "REQUIRED_KEYS",
    "Entry",
    "ManifestError",
    "read_manifest",
    "write_manifest",
    "upsert_entries",
    "merge_keeping_metrics",
    "validate_entry",
    "entries_by_name",
    "update_manifest",
]

MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS: frozenset[str] = frozenset(
    {
        "name", "task", "file", "sha256", "version", "channels", "sigma", "overlap",
        "multiple", "default", "provenance", "metrics",
    }
)
Entry = dict[str, Any]


class ManifestError(ValueError):
    """The manifest is malformed: missing keys, bad values or duplicate names."""


def validate_entry(entry: Entry) -> None:
    """Fail loudly on an entry the service could not use."""
    missing = REQUIRED_KEYS - entry.keys()
    name = entry.get("name", "<unnamed>")
    if missing:
        raise ManifestError(f"entry {name!r} lacks {sorted(missing)}")
    if not isinstance(entry["name"], str) or not entry["name"]:
        raise ManifestError(f"entry name must be a non-empty string, got {entry['name']!r}")
    if entry["channels"] not in (1, 3):
        raise ManifestError(f"{name}: channels must be 1 or 3, got {entry['channels']!r}")
    sigma = entry["sigma"]
    if sigma is not None and (not isinstance(sigma, (int, float)) or sigma <= 0):
        raise ManifestError(f"{name}: sigma must be a positive number or null, got {sigma!r}")
    for key in ("overlap", "multiple"):
        if not isinstance(entry[key], int) or entry[key] < (0 if key == "overlap" else 1):
            raise ManifestError(f"{name}: bad {key} {entry[key]!r}")
    if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
        raise ManifestError(f"{name}: file must be relative to the manifest folder")
    if not isinstance(entry["metrics"], dict) or not isinstance(entry["provenance"], dict):
        raise ManifestError(f"{name}: metrics and provenance must be objects")


def entries_by_name(entries: Iterable[Entry]) -> dict[str, Entry]:
    """Index entries by name, rejecting duplicates."""
    index: dict[str, Entry] = {}
    for entry in entries:
        validate_entry(entry)
        if entry["name"] in index:
            raise ManifestError(f"duplicate model name {entry['name']!r}")
        index[entry["name"]] = entry
    return index


def read_manifest(path: str | Path) -> list[Entry]:
    """Entries of the manifest at ``path``; an absent file is an empty manifest."""
    path = Path(path)
    if not path.exists():
        return []
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise ManifestError(f"{path}: expected an object with a 'models' list")
    entries: list[Entry] = document["models"]
    entries_by_name(entries)  # validates, rejects duplicates
    return entries


def write_manifest(path: str | Path, entries: Iterable[Entry]) -> None:
    """Write entries sorted by name, atomically."""
    path = Path(path)
    index = entries_by_name(entries)
    document = {"models": [index[name] for name in sorted(index)]}
    text = json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the manifest is a world-readable artefact
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def upsert_entries(existing: Iterable[Entry], updates: Iterable[Entry]) -> list[Entry]:
    """Replace entries with the same name, add new ones; result sorted by name.

    Duplicate names within ``updates`` are an error (two exports claiming one name).
    """
    merged = entries_by_name(existing)
    merged.update(entries_by_name(updates))
    return [merged[name] for name in sorted(merged)]


def merge_keeping_metrics(current: Iterable[Entry], updates: Iterable[Entry]) -> list[Entry]:
    """Upsert ``updates``; an entry whose file hash is unchanged keeps its measured metrics.

    Re-exporting the same bytes must not throw away an evaluation that took an hour; new bytes
    start with no metrics, so a stale figure can never describe a changed model. The same holds
    for ``variants`` (the int8 file quantized from these bytes, ``export.quantize``): kept with
    the same bytes, dropped with new ones, whose variant would be of another model.
    """
    current = list(current)
    previous = {e["name"]: e for e in current}
    merged = []
    for entry in updates:
        old = previous.get(entry["name"])
        if old is not None and old["sha256"] == entry["sha256"]:
            entry = {**entry, "metrics": old["metrics"], **({"variants": old["variants"]} if "variants" in old else {})}
        merged.append(entry)
    return upsert_entries(current, merged)


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock on the manifest's folder (the file itself is replaced on write)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def update_manifest(
    path: str | Path, change: Callable[[list[Entry]], Iterable[Entry]]
) -> list[Entry]:
    """Read, change and write the manifest as one locked step; returns the entries written.

    ``change`` receives the entries as they are on disk *now* and returns the new full list.
    """
    path = Path(path)
    with _directory_lock(path.parent):
        entries = list(change(read_manifest(path)))
        write_manifest(path, entries)
    return read_manifest(path)
