"""Typed per-model metadata read from ``models/onnx/manifest.json`` (one frozen record per model).

The manifest is the single source of truth for what a model expects (channels, receptive-field
margin, size multiple, noise level), so callers never hard-code per-model facts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from restore.core.types import Task

_TASKS: frozenset[str] = frozenset({"denoise", "edges", "weather"})
#: Precisions a manifest entry may list a variant file for (the float32 file is the entry itself).
_PRECISIONS: frozenset[str] = frozenset({"int8"})
#: What a denoiser was trained on: white Gaussian noise (the paper's), or camera noise (Poisson-Gaussian
#: in linear light, then JPEG with 4:2:0 or 4:4:4 chroma: ``training.dncnn.camera_noise``).
_NOISES: frozenset[str] = frozenset({"gaussian", "camera"})
T = TypeVar("T")


class ManifestError(ValueError):
    """The manifest is malformed; raised at start-up, never per request."""


@dataclass(frozen=True)
class Variant:
    """Another file of the same model in another numeric precision (``export.quantize``), with its
    own checksum, provenance and measured quality and speed; which one runs is ``restore.service.precision``'s call."""

    precision: str
    file: Path
    sha256: str
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_entry(cls, precision: str, entry: dict[str, Any], root: Path) -> Variant:
        return cls(
            precision=precision,
            file=root / _typed(entry, "file", str),
            sha256=_typed(entry, "sha256", str).lower(),
            provenance=dict(entry.get("provenance") or {}),
            metrics=dict(entry.get("metrics") or {}),
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
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)
    variants: dict[str, Variant] = field(default_factory=dict, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_entry(cls, entry: dict[str, Any], root: Path) -> ModelSpec:
        """One entry, checked field by field: a wrong type is a ManifestError naming the model, never a traceback."""
        try:
            task = entry["task"]
            if task not in _TASKS:
                raise ManifestError(f"model {entry.get('name')!r}: unknown task {task!r}")
            channels = int(entry["channels"])
            if channels not in (1, 3):
                raise ManifestError(f"model {entry['name']!r}: channels must be 1 or 3")
            noise = entry.get("noise", "gaussian")
            if noise not in _NOISES:
                raise ManifestError(f"model {entry['name']!r}: unknown noise {noise!r}; known: {sorted(_NOISES)}")
            known = {f for f in cls.__dataclass_fields__ if f != "extra"}
            return cls(
                name=_typed(entry, "name", str),
                task=task,
                file=root / _typed(entry, "file", str),
                sha256=_typed(entry, "sha256", str).lower(),
                version=_typed(entry, "version", str),
                channels=channels,
                sigma=None if entry.get("sigma") is None else float(entry["sigma"]),
                overlap=int(entry["overlap"]),
                multiple=max(1, int(entry["multiple"])),
                default=_typed(entry, "default", bool),
                noise=noise,
                weather_labels=_labels(entry.get("weather_labels") or []),
                provenance=dict(entry.get("provenance") or {}),
                metrics=dict(entry.get("metrics") or {}),
                variants=_variants(entry.get("variants") or {}, root),
                extra={k: v for k, v in entry.items() if k not in known},
            )
        except KeyError as exc:
            raise ManifestError(f"model {entry.get('name')!r}: missing field {exc}") from exc
        except (TypeError, ValueError) as exc:  # int("three"), dict("abc"), float([1])...
            raise ManifestError(f"model {entry.get('name')!r}: a field has the wrong type: {exc}") from exc

    def condition(self, label: str) -> npt.NDArray[np.float32]:
        """The one-hot ``weather`` row of ``label`` for a conditioned model."""
        if label not in self.weather_labels:
            raise ValueError(f"model {self.name} takes no weather {label!r}; it knows {list(self.weather_labels)}")
        row = np.zeros(len(self.weather_labels), np.float32)
        row[self.weather_labels.index(label)] = 1.0
        return row

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
            "provenance": self.provenance,
            "metrics": self.metrics,
            **({"variants": {k: v.public() for k, v in self.variants.items()}} if self.variants else {}),
            **self.extra,
        }


def _typed(entry: dict[str, Any], key: str, kind: type[T]) -> T:
    """``entry[key]`` if it is a ``kind``: str() of a list would be a name, bool("false") would be True."""
    value = entry[key]
    if not isinstance(value, kind):
        raise TypeError(f"{key} must be a {kind.__name__}, not {value!r}")
    return value


def _labels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
        raise TypeError("weather_labels must be a list of distinct names")
    return tuple(value)


def _variants(entries: dict[str, Any], root: Path) -> dict[str, Variant]:
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise TypeError("variants must be an object of objects, one per precision")
    unknown = set(entries) - _PRECISIONS
    if unknown:
        raise ValueError(f"unknown variant precisions {sorted(unknown)}; known: {sorted(_PRECISIONS)}")
    return {precision: Variant.from_entry(precision, entry, root) for precision, entry in entries.items()}


def load_manifest(models_dir: Path) -> list[ModelSpec]:
    """Parse the manifest, failing loudly on duplicate names or missing fields."""
    path = models_dir / "manifest.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    entries = document.get("models", []) if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ManifestError(f"{path} must be an object whose \"models\" is a list of objects, one per model")
    specs = [ModelSpec.from_entry(entry, models_dir) for entry in entries]
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
