"""Take docs/web-page.png, the README's picture of the page at /, with the real colour DnCNN.

    .venv/bin/python -m tests.e2e.screenshot                       # CBSD68 14037 from ../shared
    .venv/bin/python -m tests.e2e.screenshot --image my.png --sigma 25 --out /tmp/page.png

Starts the service (only dncnn-color-blind loaded, so it is ready in seconds) on a free local port,
adds Gaussian noise of --sigma to the image with a fixed seed, sends it through the page in system
Chromium (tests/e2e/browser.py) as a person would, and saves the page once the result shows. The
PNG is reduced to a 128-colour palette so the README's picture stays under 200 KB.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from restore.service.settings import Settings
from tests.conftest import REPO, SHARED, running_server
from tests.e2e.browser import block_outside, chromium

DEFAULT_IMAGE = SHARED / "data" / "denoise" / "CBSD68" / "14037.png"
MAX_BYTES = 200 * 1024


def noisy_png(path: Path, sigma: float) -> bytes:
    clean = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    noisy = clean + np.random.default_rng(0).normal(0.0, sigma, clean.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--sigma", type=float, default=25.0, help="Gaussian noise added first (0-255 scale)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "web-page.png")
    args = parser.parse_args()
    upload = noisy_png(args.image, args.sigma)
    settings = Settings(models=("dncnn-color-blind",), batch_seconds=0)
    with running_server(settings, engine_factory=None) as server, chromium() as browser:  # type: ignore[arg-type]
        page = browser.new_page(viewport={"width": 760, "height": 1200})
        page.set_default_timeout(120_000)
        blocked = block_outside(page)
        page.goto(f"{server.base}/")
        page.set_input_files("#file", files=[{"name": f"{args.image.stem}-noisy.png", "mimeType": "image/png", "buffer": upload}])
        page.wait_for_selector("#status:has-text('is ready')")
        page.click("#run")
        page.wait_for_selector("#status:has-text('Done.')")
        page.wait_for_timeout(300)  # the result image decodes
        bottom = page.evaluate("document.getElementById('download').getBoundingClientRect().bottom + window.scrollY")
        shot = page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": 760, "height": bottom + 16})
        if blocked:
            print(f"the page tried to reach other hosts: {blocked}", file=sys.stderr)
            return 1
    image = Image.open(io.BytesIO(shot)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, format="PNG", optimize=True)
    size = args.out.stat().st_size
    print(f"{args.out}: {image.width}x{image.height}, {size / 1024:.0f} KiB")
    return 0 if size < MAX_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
