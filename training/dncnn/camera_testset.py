"""The realistic CBSD68 test set: each CBSD68 image under each of ``camera_noise.TEST_FAMILIES``.

Usage::

    python -m training.dncnn.camera_testset --data ../shared/data/denoise --out data/CBSD68-camera [--check]

Writes ``OUT/<family>/<image stem>.png|.jpg`` (the JPEG families as JPEG files, as a user would
send them) and ``OUT/SHA256SUMS``. Written once and deterministic: the noise of image ``f`` in
family ``k`` comes from ``numpy.random.default_rng([TESTSET_SEED, k, crc32(f)])`` and the JPEG
bytes from the pinned Pillow, so another run writes the same bytes; ``--check`` renders again and
compares with the files on disk instead of writing. ``training.dncnn.evaluate --camera OUT``
scores the colour models on it against the clean CBSD68. The set is derived from CBSD68 (research
use): it is not committed.
"""

from __future__ import annotations

import argparse
import hashlib
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from training.dncnn.camera_noise import TEST_FAMILIES, TestFamily
from training.dncnn.images import load_set

__all__ = ["TESTSET_SEED", "SUMS_NAME", "render", "render_set", "load_family", "main"]

TESTSET_SEED = 20260315
SUMS_NAME = "SHA256SUMS"


def render(family: TestFamily, name: str, clean: np.ndarray) -> bytes:
    """The file of CBSD68 image ``name`` (``clean``: H x W x 3 uint8) in ``family``."""
    rng = np.random.default_rng([TESTSET_SEED, TEST_FAMILIES.index(family), zlib.crc32(name.encode())])
    return family.file_bytes(clean, rng)


def render_set(images: Sequence[tuple[str, np.ndarray]]) -> dict[str, bytes]:
    """``{"<family>/<stem><suffix>": bytes}`` for every image in every family."""
    return {
        f"{family.name}/{Path(name).stem}{family.suffix}": render(family, name, clean)
        for family in TEST_FAMILIES for name, clean in images
    }


def load_family(root: Path, family: str) -> dict[str, np.ndarray]:
    """``{image stem: noisy H x W x 3 uint8}`` of one family as written by ``render_set``."""
    files = sorted((root / family).iterdir())
    if not files:
        raise FileNotFoundError(f"no images in {root / family}")
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in files}


def _sums(files: dict[str, bytes]) -> str:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {path}\n" for path, data in sorted(files.items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.dncnn.camera_testset", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding CBSD68/")
    parser.add_argument("--out", type=Path, required=True, help="test set folder")
    parser.add_argument("--check", action="store_true", help="compare OUT with a fresh rendering, write nothing")
    args = parser.parse_args(argv)
    files = render_set(load_set(args.data / "CBSD68", 3, None))
    sums = _sums(files)
    if args.check:
        on_disk = (args.out / SUMS_NAME).read_text()
        differ = [p for p, data in files.items() if (args.out / p).read_bytes() != data]
        if on_disk != sums or differ:
            raise SystemExit(f"{args.out} differs from a fresh rendering: {differ[:5] or SUMS_NAME}")
        print(f"{args.out}: {len(files)} files match")
        return 0
    for path, data in files.items():
        (args.out / path).parent.mkdir(parents=True, exist_ok=True)
        (args.out / path).write_bytes(data)
    (args.out / SUMS_NAME).write_text(sums)
    print(f"{args.out}: {len(files)} files, {len(TEST_FAMILIES)} families; {SUMS_NAME} written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
