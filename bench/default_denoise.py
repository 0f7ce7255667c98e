"""What /denoise's defaults do to a phone-style photo: Gaussian noise, then JPEG with 4:2:0 chroma.

    python -m bench.default_denoise --data ../shared/data/denoise/CBSD68 [--sigma 15] [--quality 75] [--limit N]

Each image gets Gaussian noise of ``--sigma`` per channel (seed 0), is saved as JPEG ``--quality``
with 4:2:0 chroma, and goes through the app in this process (the committed colour models, no
HTTP socket) three times: with no parameter (the default: the noise is estimated), with
``sigma=blind`` and with ``model=dncnn-color-real``. Prints one line per image (PSNR of the input
and of each output against the clean image, the model the default picked and its estimate), then
the means. Issue 30's newcomer case is the default recipe; docs/dncnn.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from restore.service.images import codecs
from restore.service.app import create_app
from restore.service.settings import Settings

COLOUR_MODELS = ("dncnn-color-blind", "dncnn-color-real", "dncnn-color-s15", "dncnn-color-s25", "dncnn-color-s50")
QUERIES = {"default": "", "blind": "?sigma=blind", "camera": "?model=dncnn-color-real"}


def phone_jpeg(clean: np.ndarray, sigma: float, quality: int) -> bytes:
    noisy = np.clip(np.round(clean + np.random.default_rng(0).normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "JPEG", quality=quality, subsampling=2)
    return buffer.getvalue()


def psnr(pixels: np.ndarray, clean: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((pixels.astype(float) - clean) ** 2)))


async def run(files: list[Path], sigma: float, quality: int) -> None:
    app = create_app(Settings(models=COLOUR_MODELS))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=600) as client:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.2)
            gains: dict[str, list[float]] = {name: [] for name in QUERIES}
            for path in files:
                clean = np.asarray(Image.open(path).convert("RGB")).astype(float)
                data = phone_jpeg(clean, sigma, quality)
                before = psnr(codecs.decode(data, 10**9).color, clean)
                line = f"{path.name}: input {before:.2f}"
                for name, query in QUERIES.items():
                    response = await client.post(f"/denoise{query}", content=data)
                    response.raise_for_status()
                    after = psnr(codecs.decode(response.content, 10**9).color, clean)
                    gains[name].append(after - before)
                    line += f", {name} {after:.2f}"
                    if name == "default":
                        line += f" ({response.headers['x-model']}, estimate {response.headers['x-noise-sigma']})"
                print(line, flush=True)
            for name, values in gains.items():
                at_least = sum(v >= 2.5 for v in values)
                print(f"{name}: mean gain {statistics.mean(values):+.2f} dB, median {statistics.median(values):+.2f}, "
                      f"min {min(values):+.2f}; {at_least} of {len(values)} images gain at least 2.5 dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder of clean colour PNGs (CBSD68)")
    parser.add_argument("--sigma", type=float, default=15.0)
    parser.add_argument("--quality", type=int, default=75)
    parser.add_argument("--limit", type=int, default=0, help="the first N images only (0: all)")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.png"))[: args.limit or None]
    asyncio.run(run(files, args.sigma, args.quality))


if __name__ == "__main__":
    main()
