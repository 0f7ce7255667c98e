"""The manifest model: ``models/onnx/manifest.json``, the one list of the models the project ships.

Shape::

    {"models": [{"name": ..., "task": ..., "file": ..., "sha256": ..., "version": ...,
                 "channels": 1 | 3, "sigma": float | null, "overlap": int, "multiple": int,
                 "default": bool, "provenance": {...}, "metrics": {...},
                 "noise": "gaussian" | "camera", "variants": {"int8": {...}},
                 "feather": int, "min_tile": int, ...}, ...]}

``file`` is relative to the manifest's folder. One set of rules, ``ModelSpec.from_entry``, decides
what a valid entry is for everyone: the service reads the entries as frozen ``ModelSpec`` records
(``load_manifest``), so callers never hard-code per-model facts; the export and the evaluations
read and write them as plain dicts (``read_manifest``, ``update_manifest``), so a field this module
does not know is carried through untouched.

Entries are written sorted by name so diffs are stable, every listed key present; duplicate names
are an error, never silently merged. Several tools write the one file (each model's export, the
evaluations), sometimes at the same time: they go through ``update_manifest``, which re-reads the
file and applies their change under an exclusive lock and writes through a temporary file and a
rename, so a long job never writes back a stale copy and a crash never leaves half a manifest.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from restore.core.types import Task

MANIFEST_NAME = "manifest.json"
#: Every key a written entry carries (a reader fills ``sigma``, ``provenance`` and ``metrics`` in).
REQUIRED_KEYS: frozenset[str] = frozenset(
    {"name", "task", "file", "sha256", "version", "channels", "sigma", "overlap", "multiple", "default", "provenance", "metrics"}
)
_TASKS: frozenset[str] = frozenset({"denoise", "edges", "weather"})
#: Precisions a manifest entry may list a variant file for (the float32 file is the entry itself).
_PRECISIONS: frozenset[str] = frozenset({"int8"})
#: What a denoiser was trained on: white Gaussian noise (the paper's), or camera noise (Poisson-Gaussian
#: in linear light, then JPEG with 4:2:0 or 4:4:4 chroma: ``training.dncnn.camera_noise``).
_NOISES: frozenset[str] = frozenset({"gaussian", "camera"})
#: One manifest entry as JSON gives it: what the tooling reads, changes and writes back.
Entry = dict[str, Any]
T = TypeVar("T")


class ManifestError(ValueError):
    """The manifest is malformed: a missing or wrong field, a duplicate name, unreadable JSON."""


@dataclass(frozen=True)
class Variant:
    """Another file of the same model in another numeric precision (``export.quantize``), with its
    own checksum, provenance and measured quality and speed; which one runs is the service's call."""

    precision: str
    file: Path
    sha256: str
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_entry(cls, precision: str, entry: Entry, root: Path) -> Variant:
        return cls(
            precision=precision,
            file=root / _relative_file(entry),
            sha256=_typed(entry, "sha256", str).lower(),
            provenance=_object(entry, "provenance"),
            metrics=_object(entry, "metrics"),
        )

    def public(self) -> dict[str, Any]:
        return {"file": self.file.name, "sha256": self.sha256, "provenance": self.provenance, "metrics": self.metrics}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: Task
    file: Path
    sha256: str
    version: str
    channels: int
    sigma: float | None
    overlap: int
    multiple: int
    default: bool
    noise: str = "gaussian"  # denoisers: the noise trained on (_NOISES); sigma=auto sends 4:2:0 JPEG noise to "camera"
    #: A conditioned model's labels in the order of its one-hot ``weather`` input (empty: the model
    #: takes the image only). The weather model 3 takes rain, haze, snow or unknown.
    weather_labels: tuple[str, ...] = ()
    #: Tiling needs measured at export, for a model whose output depends on context far beyond
    #: ``overlap`` (the weather model's haze path reads the whole tile): neighbouring tiles then
    #: disagree a little in flat regions, and a narrow cross-fade shows that as a seam. ``feather``:
    #: the cross-fade it needs at least (``feather_for``); ``min_tile``: the smallest tile side that
    #: keeps its output near the whole image's, below which the time budget never shrinks its tiles.
    #: 0: no need beyond the service's settings (every model whose overlap is its receptive field).
    feather: int = 0
    min_tile: int = 0
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)
    variants: dict[str, Variant] = field(default_factory=dict, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_entry(cls, entry: Entry, root: Path) -> ModelSpec:
        """One entry, checked field by field: a wrong type or value is a ManifestError naming the
        model, never a traceback. This is the definition of a valid entry."""
        name = entry.get("name")
        try:
            task = entry["task"]
            if task not in _TASKS:
                raise ValueError(f"unknown task {task!r}")
            channels = _typed(entry, "channels", int)
            if channels not in (1, 3):
                raise ValueError(f"channels must be 1 or 3, not {channels!r}")
            noise = entry.get("noise", "gaussian")
            if noise not in _NOISES:
                raise ValueError(f"unknown noise {noise!r}; known: {sorted(_NOISES)}")
            sigma = entry.get("sigma")
            if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, int | float) or sigma <= 0):
                raise ValueError(f"sigma must be a positive number or null, not {sigma!r}")
            overlap, multiple = _typed(entry, "overlap", int), _typed(entry, "multiple", int)
            if overlap < 0 or multiple < 1:
                raise ValueError(f"overlap must be >= 0 and multiple >= 1, not {overlap!r} and {multiple!r}")
            feather, min_tile = _count(entry, "feather"), _count(entry, "min_tile")
            known = {f for f in cls.__dataclass_fields__ if f != "extra"}
            return cls(
                name=_typed(entry, "name", str),
                task=task,
                file=root / _relative_file(entry),
                sha256=_typed(entry, "sha256", str).lower(),
                version=_typed(entry, "version", str),
                channels=channels,
                sigma=None if sigma is None else float(sigma),
                overlap=overlap,
                multiple=multiple,
                default=_typed(entry, "default", bool),
                noise=noise,
                weather_labels=_labels(entry.get("weather_labels") or []),
                feather=feather,
                min_tile=min_tile,
                provenance=_object(entry, "provenance"),
                metrics=_object(entry, "metrics"),
                variants=_variants(entry.get("variants") or {}, root),
                extra={k: v for k, v in entry.items() if k not in known},
            )
        except KeyError as exc:
            raise ManifestError(f"model {name!r}: missing field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"model {name!r}: {exc}") from exc

    def condition(self, label: str) -> npt.NDArray[np.float32]:
        """The one-hot ``weather`` row of ``label`` for a conditioned model."""
        if label not in self.weather_labels:
            raise ValueError(f"model {self.name} takes no weather {label!r}; it knows {list(self.weather_labels)}")
        row = np.zeros(len(self.weather_labels), np.float32)
        row[self.weather_labels.index(label)] = 1.0
        return row

    def feather_for(self, setting: int) -> int:
        """The cross-fade between this model's tiles: the service's ``setting``
        (RESTORE_TILE_OVERLAP) or the model's own measured need, whichever is wider."""
        return max(setting, self.feather)

    def tile_overlap(self, setting: int) -> int:
        """How far neighbouring tiles overlap: the margin each side discards, and the cross-fade."""
        return 2 * self.overlap + self.feather_for(setting)

    def public(self) -> dict[str, Any]:
        """The entry as clients see it in /v1/models (file name only, no server paths)."""
        return {
            "name": self.name,
            "task": self.task,
            "file": self.file.name,
            "sha256": self.sha256,
            "version": self.version,
            "channels": self.channels,
            "sigma": self.sigma,
            "overlap": self.overlap,
            "multiple": self.multiple,
            "default": self.default,
            "noise": self.noise,
            **({"weather_labels": list(self.weather_labels)} if self.weather_labels else {}),
            **({"feather": self.feather} if self.feather else {}),
            **({"min_tile": self.min_tile} if self.min_tile else {}),
            "provenance": self.provenance,
            "metrics": self.metrics,
            **({"variants": {k: v.public() for k, v in self.variants.items()}} if self.variants else {}),
            **self.extra,
        }


def _typed(entry: Entry, key: str, kind: type[T]) -> T:
    """``entry[key]`` if it is a ``kind``: str() of a list would be a name, bool("false") would be
    True, and a bool is no count."""
    value = entry[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key} must be a {kind.__name__}, not {value!r}")
    return value


def _count(entry: Entry, key: str) -> int:
    """An optional count (absent: 0)."""
    value = _typed(entry, key, int) if key in entry else 0
    if value < 0:
        raise ValueError(f"{key} must be >= 0, not {value!r}")
    return value


def _labels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
        raise TypeError("weather_labels must be a list of distinct names")
    return tuple(value)


def _object(entry: Entry, key: str) -> dict[str, Any]:
    value = entry.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be an object, not {value!r}")
    return dict(value)


def _relative_file(entry: Entry) -> str:
    """The entry's file, which must stay inside the manifest's folder."""
    file = _typed(entry, "file", str)
    if not file or Path(file).is_absolute() or ".." in Path(file).parts:
        raise ValueError(f"file must be a path inside the manifest's folder, not {file!r}")
    return file


def _variants(entries: Any, root: Path) -> dict[str, Variant]:
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise TypeError("variants must be an object of objects, one per precision")
    unknown = set(entries) - _PRECISIONS
    if unknown:
        raise ValueError(f"unknown variant precisions {sorted(unknown)}; known: {sorted(_PRECISIONS)}")
    return {precision: Variant.from_entry(precision, entry, root) for precision, entry in entries.items()}


# ------------------------------------------------------------------------------ reading
def _read_entries(path: Path) -> list[Entry]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ManifestError(f"{path} must be an object whose \"models\" is a list of objects, one per model")
    return entries


def entries_by_name(entries: Iterable[Entry]) -> dict[str, Entry]:
    """Index entries by name, each validated; a name given twice is an error."""
    index: dict[str, Entry] = {}
    for entry in entries:
        validate_entry(entry)
        if entry["name"] in index:
            raise ManifestError(f"duplicate model name {entry['name']!r}")
        index[entry["name"]] = entry
    return index


def validate_entry(entry: Entry) -> None:
    """Fail loudly on an entry the service could not use (``ModelSpec.from_entry``'s rules)."""
    ModelSpec.from_entry(entry, Path("."))


def read_manifest(path: str | Path) -> list[Entry]:
    """The validated entries of the manifest at ``path``, as plain dicts; an absent file is an empty
    manifest (an export writing the first model)."""
    path = Path(path)
    if not path.exists():
        return []
    entries = _read_entries(path)
    entries_by_name(entries)
    return entries


def load_manifest(models_dir: Path) -> list[ModelSpec]:
    """The models of ``models_dir``'s manifest as typed records; it must exist (the service's start)."""
    path = models_dir / MANIFEST_NAME
    specs = [ModelSpec.from_entry(entry, models_dir) for entry in _read_entries(path)]
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"duplicate model names in {path}: {duplicates}")
    return specs


def select_specs(specs: list[ModelSpec], names: tuple[str, ...]) -> list[ModelSpec]:
    """The models to load: those named, or every default one when no names are given."""
    if not names:
        return [spec for spec in specs if spec.default]
    by_name = {spec.name: spec for spec in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ManifestError(f"RESTORE_MODELS names unknown models: {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in names]


# ------------------------------------------------------------------------------ writing
def write_manifest(path: str | Path, entries: Iterable[Entry]) -> None:
    """Write entries sorted by name, atomically; each carries every key in ``REQUIRED_KEYS``."""
    path = Path(path)
    index = entries_by_name(entries)
    for name, entry in index.items():
        missing = REQUIRED_KEYS - entry.keys()
        if missing:
            raise ManifestError(f"entry {name!r} lacks {sorted(missing)}")
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


def update_manifest(path: str | Path, change: Callable[[list[Entry]], Iterable[Entry]]) -> list[Entry]:
    """Read, change and write the manifest as one locked step; returns the entries written.

    ``change`` receives the entries as they are on disk *now* and returns the new full list.
    """
    path = Path(path)
    with _directory_lock(path.parent):
        entries = list(change(read_manifest(path)))
        write_manifest(path, entries)
    return read_manifest(path)


def update_metrics(
    path: str | Path, evaluated: Mapping[str, str], change: Callable[[str, dict[str, Any]], dict[str, Any]]
) -> None:
    """Replace each evaluated model's metrics by ``change(name, its metrics as on disk now)``, in
    one locked update: how an evaluation records what it measured. ``evaluated`` maps each name to
    the sha256 of the file that was measured; the whole update is refused when one entry is gone or
    holds another file now, so figures of one file never land on another."""

    def changed(current: list[Entry]) -> list[Entry]:
        by_name = {e["name"]: e for e in current}
        stale = sorted(n for n, sha256 in evaluated.items() if n not in by_name or by_name[n]["sha256"] != sha256)
        if stale:
            raise ManifestError(f"{stale} re-exported or removed during the evaluation; their figures are not written")
        return upsert_entries(current, [{**by_name[n], "metrics": change(n, dict(by_name[n]["metrics"]))} for n in evaluated])

    update_manifest(path, changed)
