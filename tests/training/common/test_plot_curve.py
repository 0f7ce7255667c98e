"""training/common/plot_curve.py and training/common/log.py: ticks, a PNG from a CSV log, progress lines."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from training.common import plot_curve
from training.common.log import Progress, read_csv, write_csv
from training.common.plot_curve import nice_ticks


def test_nice_ticks_cover_the_range() -> None:
    assert nice_ticks(0, 800) == [0, 200, 400, 600, 800]
    ticks = nice_ticks(28.93, 30.51)
    assert ticks[0] <= 28.93 and ticks[-1] >= 30.51 and len(ticks) <= 8
    assert nice_ticks(5, 5)[0] <= 5 <= nice_ticks(5, 5)[-1]


def test_log_round_trip_and_plot(tmp_path: Path) -> None:
    rows = [
        {"epoch": e, "iteration": 100 * e, "patches": 6400 * e, "lr": 1e-3, "train_loss": 9.0 / e,
         "val_psnr": 28 + e / 3, "elapsed_s": 60.0 * e, "iters_per_s": 1.5}
        for e in (1, 2, 3)
    ]
    write_csv(tmp_path / "log.csv", rows)
    assert [r["val_psnr"] for r in read_csv(tmp_path / "log.csv")] == [r["val_psnr"] for r in rows]
    out = tmp_path / "curve.png"
    args = [str(tmp_path / "log.csv"), "--out", str(out), "--reference", "authors=30.44"]
    assert plot_curve.main(args) == 0
    with Image.open(out) as image:
        assert image.size == plot_curve.SIZE and image.mode == "RGB"


def test_patches_axis_compares_runs_of_different_batch_sizes(tmp_path: Path) -> None:
    for name, batch in (("b32", 32), ("b64", 64)):
        rows = [
            {"epoch": e, "iteration": 100 * e, "patches": 100 * e * batch, "lr": 1e-3,
             "train_loss": 1.0, "val_psnr": 29.0 + e / 10, "elapsed_s": 1.0, "iters_per_s": 1.0}
            for e in (1, 2)
        ]
        (tmp_path / name).mkdir()
        write_csv(tmp_path / name / "log.csv", rows)
    b32 = plot_curve.load_series(tmp_path / "b32" / "log.csv", "b32", x="patches")
    b64 = plot_curve.load_series(tmp_path / "b64" / "log.csv", "b64", x="patches")
    assert b32 == ("b32", [3200.0, 6400.0], [29.1, 29.2])
    assert b64[1] == [6400.0, 12800.0]
    assert plot_curve.load_series(tmp_path / "b64" / "log.csv", "b64")[1] == [100.0, 200.0]
    out = tmp_path / "both.png"
    args = [str(tmp_path / "b32" / "log.csv"), str(tmp_path / "b64" / "log.csv"), "--x", "patches",
            "--out", str(out)]
    assert plot_curve.main(args) == 0 and out.stat().st_size > 0


def test_progress_prints_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(total=10, stream=stream, every_s=3600)
    progress.update(1, 2.0, 1e-3)  # throttled
    progress.update(10, 1.0, 1e-4)  # the last iteration always prints
    progress.message("done")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[") and "10/10" in lines[0]
    assert lines[1] == "done"
