"""src/restore/core/manifest.py as the tooling uses it: plain entries, round trip, sorted upsert, the lock, loud failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from restore.core.manifest import ManifestError, merge_keeping_metrics, read_manifest, update_manifest, update_metrics, upsert_entries, write_manifest


def _entry(name: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name, "task": "denoise", "file": f"{name}.onnx", "sha256": "0" * 64,
        "version": "1.0.0", "channels": 1, "sigma": 25, "overlap": 17, "multiple": 1,
        "default": True, "provenance": {"source": "converted"}, "metrics": {},
    }
    entry.update(overrides)
    return entry


def test_round_trip_sorted(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_manifest(path, [_entry("b"), _entry("a", sigma=None)])
    document = json.loads(path.read_text())
    assert [e["name"] for e in document["models"]] == ["a", "b"]
    assert read_manifest(path) == document["models"]


def test_absent_manifest_is_empty(tmp_path: Path) -> None:
    assert read_manifest(tmp_path / "manifest.json") == []


def test_upsert_replaces_by_name() -> None:
    merged = upsert_entries([_entry("b"), _entry("a")], [_entry("a", version="2.0.0"), _entry("c")])
    assert [e["name"] for e in merged] == ["a", "b", "c"]
    assert merged[0]["version"] == "2.0.0"


def test_duplicates_fail(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="duplicate"):
        upsert_entries([], [_entry("a"), _entry("a")])
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"models": [_entry("a"), _entry("a")]}))
    with pytest.raises(ManifestError, match="duplicate"):
        read_manifest(path)


@pytest.mark.parametrize(
    "bad",
    [
        {"channels": 2},
        {"sigma": -1},
        {"overlap": -1},
        {"multiple": 0},
        {"file": "../outside.onnx"},
        {"metrics": []},
    ],
)
def test_invalid_entries_fail(bad: dict[str, Any]) -> None:
    with pytest.raises(ManifestError):
        upsert_entries([], [_entry("a", **bad)])


def test_missing_keys_fail() -> None:
    entry = _entry("a")
    del entry["sha256"]
    with pytest.raises(ManifestError, match="sha256"):
        upsert_entries([], [entry])


def test_update_manifest_rereads_and_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "onnx" / "manifest.json"
    write_manifest(path, [_entry("a")])
    stale = read_manifest(path)
    write_manifest(path, stale + [_entry("b")])  # another tool adds an entry meanwhile
    written = update_manifest(path, lambda current: upsert_entries(current, [_entry("c")]))
    assert [e["name"] for e in written] == ["a", "b", "c"]
    assert path.stat().st_mode & 0o777 == 0o644
    assert not [p for p in path.parent.iterdir() if p.name != "manifest.json"]  # no temp left


def test_re_export_keeps_metrics_only_for_the_same_bytes() -> None:
    measured = {"BSD68": {"25": 29.23}}
    int8 = {"int8": {"file": "x.int8.onnx", "sha256": "2" * 64, "provenance": {}, "metrics": {}}}
    current = [_entry("a", metrics=measured, variants=int8), _entry("b", metrics=measured, variants=int8)]
    same, changed = _entry("a"), _entry("b", sha256="1" * 64)
    merged = {e["name"]: e for e in merge_keeping_metrics(current, [same, changed, _entry("c")])}
    assert merged["a"]["metrics"] == measured  # same file: the evaluation still describes it
    assert merged["a"]["variants"] == int8  # and its int8 variant is still of this model
    assert merged["b"]["metrics"] == {} and "variants" not in merged["b"]  # new bytes: old figures must not survive
    assert merged["b"]["sha256"] == "1" * 64
    assert sorted(merged) == ["a", "b", "c"]


def test_update_metrics_merges_into_the_file_as_it_is_now(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_manifest(path, [_entry("a", metrics={"speed": 1}), _entry("b")])
    update_metrics(path, {"a": "0" * 64}, lambda name, metrics: {**metrics, "BSD68": {"25": 29.2}})
    (a, b) = read_manifest(path)
    assert a["metrics"] == {"speed": 1, "BSD68": {"25": 29.2}} and b["metrics"] == {}


def test_update_metrics_refuses_figures_of_another_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_manifest(path, [_entry("a")])
    with pytest.raises(ManifestError, match="re-exported or removed"):
        update_metrics(path, {"a": "1" * 64}, lambda name, metrics: {"BSD68": 1})
    with pytest.raises(ManifestError, match="re-exported or removed"):
        update_metrics(path, {"a": "0" * 64, "gone": "0" * 64}, lambda name, metrics: {"BSD68": 1})
    assert read_manifest(path)[0]["metrics"] == {}
