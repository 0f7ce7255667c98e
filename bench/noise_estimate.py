"""What ``/denoise?sigma=auto`` costs: the noise estimate alone, and a 1 MP request end to end with and without it.

    python -m bench.noise_estimate estimator              # estimate_noise on 1, 12 and 50 MP, one thread
    python -m bench.noise_estimate overhead --repeats 5   # 1 MP PNG: /denoise vs /denoise?sigma=auto

``overhead`` starts ``python -m restore.service`` with the blind colour model only (so both requests run
the same model: white noise keeps the blind model under ``sigma=auto``), alternates the two
requests so drift hits both alike, and prints the medians, the ``estimate`` stage of
Server-Timing and the overhead in percent (issue 15: under 5% of a 1 MP request). Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from bench.service_bench import COLOR, png, post, scene, server
from restore.core.noise_level import estimate_noise


def estimator(repeats: int) -> None:
    """Wall and CPU time of ``estimate_noise`` alone (run with OPENBLAS_NUM_THREADS=1 for one thread)."""
    print("| image | wall (median) | CPU (median) | estimate |\n|---|---|---|---|")
    for height, width in ((1000, 1000), (3000, 4000), (6000, 8334)):
        image = scene(height, width, 3)
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            result = estimate_noise(image, 255)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        print(f"| {width}x{height} RGB ({height * width / 1e6:.0f} MP) | {statistics.median(walls) * 1000:.0f} ms | "
              f"{statistics.median(cpus) * 1000:.0f} ms | {result.sigma:.1f} (chroma ratio {result.chroma_ratio:.2f}) |",
              flush=True)


def _stage(server_timing: str, stage: str) -> float:
    found = re.search(rf"{stage};dur=([0-9.]+)", server_timing)
    return float(found.group(1)) / 1000 if found else 0.0


def overhead(repeats: int) -> None:
    """End-to-end seconds of a 1 MP RGB PNG, default vs sigma=auto, on the same model."""
    body = png(scene(1024, 1024, 3))
    with server(COLOR) as (url, _):
        post(url, body)  # warm both paths
        post(url, body, query="?sigma=auto")
        plain: list[float] = []
        auto: list[float] = []
        estimate: list[float] = []
        for _ in range(repeats):
            plain.append(post(url, body)[0])
            seconds, response = post(url, body, query="?sigma=auto")
            assert response.headers["x-model"] == COLOR, response.headers["x-model"]
            auto.append(seconds)
            estimate.append(_stage(response.headers["server-timing"], "estimate"))
    base, with_auto, stage = (statistics.median(v) for v in (plain, auto, estimate))
    print("| 1024x1024 RGB PNG | default | sigma=auto | estimate stage | overhead (e2e) | overhead (stage) |")
    print("|---|---|---|---|---|---|")
    print(f"| {COLOR}, {repeats} pairs | {base:.2f} s | {with_auto:.2f} s | {stage * 1000:.0f} ms | "
          f"{100 * (with_auto / base - 1):+.1f}% | {100 * stage / base:.1f}% |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["estimator", "overhead"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    (estimator if args.what == "estimator" else overhead)(args.repeats)


if __name__ == "__main__":
    main()
