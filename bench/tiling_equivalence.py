"""Production tiling vs whole-image inference of the same ONNX model: PSNR on 8-bit output and seams.

    python -m bench.tiling_equivalence [--model dncnn-gray-s25] [--tile 1024]

Uses the service's own tiler and blender (restore.core.tiling.TiledImage) with the production tile
size and overlap; the whole-image reference is one ORT call on the full image.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort

from restore.core.manifest import load_manifest
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels
from restore.core.tiling import TiledImage
from restore.service.inference.engine import available_cpus
from restore.service.inference.pipeline import plan_for
from restore.service.settings import DEFAULT_MODELS_DIR, Settings

SIZES = [(1, 1), (7, 5), (333, 517), (1023, 1025), (1536, 2048)]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="dncnn-gray-s25")
    parser.add_argument("--tile", type=int, default=Settings().tile_size)
    args = parser.parse_args()
    settings = Settings(tile_size=args.tile)
    spec = next(s for s in load_manifest(DEFAULT_MODELS_DIR) if s.name == args.model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = available_cpus()
    session = ort.InferenceSession(str(spec.file), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    print(f"model {spec.name}, tile {args.tile}, overlap {spec.tile_overlap(settings.tile_overlap)}")
    print("| size | tiles | PSNR tiled vs whole (8-bit) | max abs diff (8-bit levels) |")
    print("|---|---|---|---|")
    for height, width in SIZES:
        y, x = np.mgrid[0:height, 0:width]
        clean = 128 + 60 * np.sin(x / 31) * np.cos(y / 23)
        image = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)[:, :, None]
        image = np.repeat(image, spec.channels, axis=2)
        work = TiledImage(image, plan_for(spec, settings, height, width), 255)
        for index in range(work.plan.count):
            work.accept(index, session.run(None, {"input": work.tile(index)[None]})[0][0])
        assert work.output is not None
        tiled = to_pixels(work.output, np.dtype(np.uint8), overwrite=True)
        m = spec.multiple  # the whole image padded as restore.core.tiling.pad_to_plan pads
        pad_h, pad_w = -height % m, -width % m
        mode = "reflect" if height > pad_h and width > pad_w else "symmetric"
        padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
        whole = session.run(None, {"input": padded.transpose(2, 0, 1)[None].astype(np.float32) / 255})[0][0]
        whole = whole[:, :height, :width]
        whole_q = to_pixels(np.ascontiguousarray(whole.transpose(1, 2, 0)), np.dtype(np.uint8), overwrite=True)
        diff = int(np.abs(tiled.astype(int) - whole_q.astype(int)).max())
        print(f"| {width}x{height} | {work.plan.count} | {psnr(tiled, whole_q):.2f} dB | {diff} |", flush=True)
    print(json.dumps({"model": spec.name, "tile": args.tile}))


if __name__ == "__main__":
    main()
