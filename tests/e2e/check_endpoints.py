"""Compare the service in the container with the same service run by `make run` on the host.

Called by tests/e2e/docker.sh (not a pytest module); run it with the repository's .venv python:

    .venv/bin/python tests/e2e/check_endpoints.py --container http://127.0.0.1:18000 --host http://127.0.0.1:18001

Checks the operations endpoints and /v1/models in the container (every model ready, on the CPU
provider), finds which of /denoise, /edges and /derain the container offers (GET /openapi.json;
/denoise is required), POSTs one generated PNG to each offered endpoint on both servers, and checks
status 200, Content-Type image/png, a PNG of the input's pixel size, and identical decoded pixels.
Also loads the web page at /, /docs and /redoc in the container and every asset their HTML names
(src/restore/service/api/static and fastapi-offline's Swagger UI and ReDoc files must be in the image). Exit status
0 when everything matched.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable

import numpy as np
from PIL import Image

ENDPOINTS = ("/denoise", "/edges", "/derain")
REQUIRED = "/denoise"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = 96, 64  # small (one tile, quick on two CPUs), a multiple of 32 for any model


def fetch(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def generated_png() -> bytes:
    """A deterministic noisy colour image: gradients, a bright square (edges), Gaussian noise."""
    rng = np.random.default_rng(20260522)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    img = np.stack([255 * x / WIDTH, 255 * y / HEIGHT, 128 + 64 * np.sin(x / 7) * np.cos(y / 5)], axis=-1)
    img[16:48, 32:64] = (230, 200, 40)
    img += rng.normal(0, 20, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="e2e.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def decode(png: bytes) -> tuple[str, tuple[int, int], np.ndarray]:
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        return im.mode, im.size, np.asarray(im)


def check_pages(base: str, check: Callable[[bool, str], bool]) -> None:
    """The page and the docs answer HTML, and each src/href they name is served (src/restore/service/api/web.py)."""
    for page in ("/", "/docs", "/redoc"):
        status, headers, html = fetch(base + page)
        if not check(status == 200 and headers.get("content-type", "").startswith("text/html"), f"GET {page}: {status}"):
            continue
        references = [ref for ref in re.findall(r'(?:src|href)="([^"#][^"]*)"', html.decode()) if "://" not in ref]
        check(bool(references), f"GET {page}: names no asset")
        for ref in references:
            status, _, body = fetch(urllib.parse.urljoin(base + page, ref))
            check(status == 200 and len(body) > 0, f"GET {ref} (named by {page}): {status}")
        print(f"GET {page}: 200 and its {len(references)} assets")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--container", required=True, help="base URL of the service in the container")
    parser.add_argument("--host", required=True, help="base URL of the service started by `make run`")
    args = parser.parse_args()
    failures: list[str] = []

    def check(ok: bool, what: str) -> bool:
        if not ok:
            failures.append(what)
            print(f"  FAIL {what}")
        return ok

    for path in ("/healthz", "/readyz", "/metrics", "/v1/models", "/openapi.json"):
        status, _, _ = fetch(args.container + path)
        check(status == 200, f"GET {path} in the container: {status}")

    check_pages(args.container, check)

    _, _, body = fetch(args.container + "/v1/models")
    listing = json.loads(body)
    print(f"container /v1/models: device={listing.get('device')}")
    for model in listing.get("models", []):
        print(f"  {model.get('name')}: status={model.get('status')} provider={model.get('provider')}")
        check(model.get("provider") == "CPUExecutionProvider", f"{model.get('name')} not on the CPU provider")
    check(bool(listing.get("models")), "no models listed")

    _, _, body = fetch(args.container + "/openapi.json")
    paths = json.loads(body).get("paths", {})
    offered = [p for p in ENDPOINTS if "post" in paths.get(p, {})]
    skipped = [p for p in ENDPOINTS if p not in offered]
    print(f"endpoints tested: {' '.join(offered) or '-'}; skipped (not offered by this service): {' '.join(skipped) or '-'}")
    check(REQUIRED in offered, f"{REQUIRED} is not offered")

    image = generated_png()
    for path in offered:
        results = {}
        for name, base in (("container", args.container), ("host", args.host)):
            body, content_type = multipart(image)
            results[name] = fetch(f"{base}{path}", body, {"Content-Type": content_type, "Accept": "image/png"})
        status, headers, data = results["container"]
        h_status, _, h_data = results["host"]
        if not (check(status == 200, f"POST {path} in the container: {status} {data[:300]!r}")
                & check(h_status == 200, f"POST {path} on the host: {h_status} {h_data[:300]!r}")):
            continue
        ctype = headers.get("content-type", "")
        check(ctype.split(";")[0].strip() == "image/png", f"POST {path}: Content-Type {ctype!r}, expected image/png")
        if not check(data.startswith(PNG_SIGNATURE) and h_data.startswith(PNG_SIGNATURE), f"POST {path}: body is not a PNG"):
            continue
        mode, size, pixels = decode(data)
        h_mode, h_size, h_pixels = decode(h_data)
        check(size == (WIDTH, HEIGHT), f"POST {path}: output {size[0]}x{size[1]}, input {WIDTH}x{HEIGHT}")
        same = mode == h_mode and pixels.shape == h_pixels.shape and np.array_equal(pixels, h_pixels)
        if not same and pixels.shape == h_pixels.shape:
            diff = np.abs(pixels.astype(np.int64) - h_pixels.astype(np.int64))
            detail = f"{int((diff > 0).sum())} values differ, max |diff| {int(diff.max())}"
        else:
            detail = f"modes {mode}/{h_mode}, shapes {pixels.shape}/{h_pixels.shape}"
        check(same, f"POST {path}: container and host outputs differ ({detail})")
        print(
            f"POST {path}: 200 {ctype}, {len(data)} bytes, {size[0]}x{size[1]} {mode}, model {headers.get('x-model', '?')}"
            f" -> {'pixel-identical to' if same else 'DIFFERENT from'} make run ({len(h_data)} bytes)"
        )

    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all endpoint checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
