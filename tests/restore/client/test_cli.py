"""The `restore` command against a live server: folder tree kept, resume skips, failures and exit
codes, progress (files, and tiles through the job API), environment variables and --help."""

from __future__ import annotations

import http.server
import io
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import restore.client._client as client_module
from restore.client.cli import main
from restore.service.settings import Settings
from tests.conftest import REPO, Running, encode_pil, noisy_image, running_server, write_fake_suite


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("cli")
    settings = Settings(models_dir=write_fake_suite(root / "models"), tile_size=64, tile_overlap=2, api_keys=("secret",))
    with running_server(settings) as running:
        yield running


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """in/a.png, in/sub/b.jpg, in/sub/deeper/c.bmp and a file that is not an image."""
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.png").write_bytes(encode_pil(noisy_image(100, 130, 3), "PNG"))
    (root / "sub" / "b.jpg").write_bytes(encode_pil(noisy_image(40, 50, 3, seed=1), "JPEG"))
    (root / "sub" / "deeper" / "c.bmp").write_bytes(encode_pil(noisy_image(30, 20, 1, seed=2), "BMP"))
    (root / "notes.txt").write_text("not an image")
    return root


def restore(server: Running, *args: str) -> tuple[int, str]:
    stderr = io.StringIO()
    code = main([*args, "--url", server.base, "--api-key", "secret"], stderr=stderr)
    return code, stderr.getvalue()


def service(server: Running, path: str, body: bytes) -> bytes:
    response = httpx.post(f"{server.base}{path}", content=body, headers={"Authorization": "Bearer secret"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


def test_a_folder_keeps_its_tree_and_each_file_its_format(server: Running, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, log = restore(server, "denoise", str(tree), "-o", str(out), "-j", "2")
    assert code == 0, log
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "sub/b.jpg", "sub/deeper/c.png"]  # BMP comes back as PNG, named so
    assert (out / "sub" / "b.jpg").read_bytes() == service(server, "/denoise?format=jpeg", (tree / "sub" / "b.jpg").read_bytes())
    assert "3 done, 0 skipped (output exists), 0 failed" in log


def test_model_goes_to_the_service(server: Running, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean.png"  # one file in, one file out
    code, log = restore(server, "denoise", str(tree / "a.png"), "-o", str(out), "--model", "colour")
    assert code == 0, log
    assert out.read_bytes() == service(server, "/denoise?model=colour&format=png", (tree / "a.png").read_bytes())
    code, log = restore(server, "denoise", str(tree / "a.png"), "-o", str(tmp_path / "bad.png"), "--model", "gray")
    assert code == 1 and "'gray' takes 1-channel images" in log


def test_a_second_run_skips_what_exists_and_overwrite_redoes_it(server: Running, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert restore(server, "edges", str(tree), "-o", str(out), "--thin")[0] == 0
    assert sorted(p.name for p in out.rglob("*.png")) == ["a.png", "b.png", "c.png"]  # edge maps are PNG
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "sub" / "b.png").unlink()  # as if interrupted before this one
    code, log = restore(server, "edges", str(tree), "-o", str(out), "--thin")
    assert code == 0 and "1 done, 2 skipped (output exists), 0 failed" in log
    assert (out / "a.png").stat().st_mtime_ns == before[out / "a.png"]
    assert (out / "sub" / "b.png").read_bytes() == service(server, "/edges?thin=true&format=png", (tree / "sub" / "b.jpg").read_bytes())
    code, log = restore(server, "edges", str(tree), "-o", str(out), "--thin", "--overwrite")
    assert code == 0 and "3 done, 0 skipped" in log
    assert not list(out.rglob("*.part"))


def test_a_failed_file_is_reported_and_the_exit_code_is_1(server: Running, tree: Path, tmp_path: Path) -> None:
    (tree / "sub" / "broken.png").write_bytes(encode_pil(noisy_image(40, 40, 3), "PNG")[:200])
    out = tmp_path / "out"
    code, log = restore(server, "derain", str(tree), "-o", str(out))
    assert code == 1
    assert "failed: " in log and "broken.png" in log and "422" in log
    assert "3 done, 0 skipped (output exists), 1 failed" in log
    assert not (out / "sub" / "broken.png").exists()


def test_big_files_go_through_the_job_api_and_report_tiles(server: Running, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean.png"
    code, log = restore(server, "denoise", str(tree / "a.png"), "-o", str(out), "--big", "0")
    assert code == 0, log
    assert "tiles 6/6 (100%)" in log and "succeeded" in log
    assert out.read_bytes() == service(server, "/denoise?format=png", (tree / "a.png").read_bytes())


def test_url_and_key_come_from_the_environment(server: Running, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORE_URL", server.base)
    monkeypatch.setenv("RESTORE_API_KEY", "secret")
    stderr = io.StringIO()
    assert main(["dehaze", str(tree / "sub" / "b.jpg"), "-o", str(tmp_path / "x.webp"), "--format", "webp", "-q"], stderr=stderr) == 0
    assert (tmp_path / "x.webp").read_bytes()[8:12] == b"WEBP"
    assert stderr.getvalue().strip() == "restore: 1 done, 0 skipped (output exists), 0 failed"  # -q: the summary only
    monkeypatch.setenv("RESTORE_API_KEY", "wrong")
    code = main(["dehaze", str(tree / "a.png"), "-o", str(tmp_path / "y.png")], stderr=stderr)
    assert code == 1 and "401 Unauthorized" in stderr.getvalue()


def test_an_unreachable_service_and_bad_usage_say_so(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stderr = io.StringIO()
    assert main(["denoise", str(tree), "-o", str(tmp_path / "o"), "--url", "http://127.0.0.1:9"], stderr=stderr) == 1
    assert "cannot reach http://127.0.0.1:9" in stderr.getvalue()
    with pytest.raises(SystemExit) as usage:
        main(["denoise", str(tmp_path / "missing"), "-o", str(tmp_path / "o")])
    assert usage.value.code == 2 and "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["denoise", str(tree), "-o", str(tmp_path / "o"), "--sigma", "25", "--model", "colour"])
    assert usage.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_a_wrong_option_prints_the_operations_usage(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["denoise", str(tree), "-o", str(tmp_path / "o"), "--thin"])  # an edges option
    err = capsys.readouterr().err
    assert usage.value.code == 2 and err.startswith("usage: restore denoise") and "unrecognized arguments: --thin" in err


@pytest.mark.parametrize("url", ["ftp://example", "http://", "http://exa mple:80", "localhost:99999"])
def test_a_url_that_cannot_be_a_service_address_is_a_usage_error(
    url: str, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["derain", str(tree), "-o", str(tmp_path / "o"), "--url", url])
    err = capsys.readouterr().err
    assert usage.value.code == 2 and err.startswith("usage: restore derain") and "--url" in err and "Traceback" not in err


def test_a_url_without_a_scheme_is_http(server: Running, tree: Path, tmp_path: Path) -> None:
    stderr = io.StringIO()
    host_port = server.base.removeprefix("http://")
    code = main(["derain", str(tree / "a.png"), "-o", str(tmp_path / "a.png"), "--url", host_port, "--api-key", "secret"], stderr=stderr)
    assert code == 0, stderr.getvalue()


def test_a_url_that_is_not_the_service_root_says_so_once(server: Running, tree: Path, tmp_path: Path) -> None:
    stderr = io.StringIO()
    code = main(["denoise", str(tree), "-o", str(tmp_path / "o"), "--url", server.base + "/api", "--api-key", "secret"], stderr=stderr)
    log = stderr.getvalue()
    assert code == 1 and log.count("is --url the service root?") == 1, log
    assert "404" in log and "Traceback" not in log and not (tmp_path / "o").exists()


def test_a_file_that_is_not_an_image_or_cannot_be_read_fails_alone(
    server: Running, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, log = restore(server, "derain", str(tree / "notes.txt"), str(tree / "a.png"), "-o", str(tmp_path / "out"))
    assert code == 1 and "failed: " + str(tree / "notes.txt") + ": not an image file" in log and "Traceback" not in log
    assert "1 done, 0 skipped (output exists), 1 failed" in log and (tmp_path / "out" / "a.png").is_file()
    def unreadable(path: object, mode: str = "r") -> object:  # as root, chmod 000 would not stop the read
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(client_module, "open", unreadable, raising=False)
    code, log = restore(server, "derain", str(tree / "a.png"), "-o", str(tmp_path / "b.png"))
    assert code == 1 and f"failed: {tree / 'a.png'}: cannot read it: Permission denied" in log and "Traceback" not in log


class SlowEcho(http.server.BaseHTTPRequestHandler):
    """Answers every POST with its own body after ``delay`` seconds: a slow service for Ctrl-C."""

    delay = 1.0

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[tuple[str, type[SlowEcho]]]:
    handler = type("Handler", (SlowEcho,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]  # the client left: expected
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_ctrl_c_stops_within_seconds_leaves_no_temporary_file_and_a_rerun_resumes(
    slow_server: tuple[str, type[SlowEcho]], tmp_path: Path
) -> None:
    url, handler = slow_server
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for i in range(12):
        (source / f"{i:02d}.png").write_bytes(encode_pil(noisy_image(16, 16, 3, seed=i), "PNG"))
    command = [sys.executable, "-m", "restore.client", "denoise", str(source), "-o", str(out), "-j", "2", "--url", url]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    # A child inherits an ignored SIGINT (pytest started in the background, as `cmd &` does), and
    # Python then keeps ignoring it: start the client as a terminal would, with Ctrl-C live.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.png"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the next two uploads are in flight
    run.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    _, log = run.communicate(timeout=30)
    took = time.monotonic() - interrupted
    assert run.returncode == 130 and took < 3, (took, log)
    assert "interrupted: " in log and "not done; run the same command again to resume" in log and "Traceback" not in log
    done = sorted(p.name for p in out.glob("*.png"))
    assert 2 <= len(done) < 12 and not [p for p in out.iterdir() if p.suffix == ".part"], list(out.iterdir())
    time.sleep(handler.delay + 0.5)  # the abandoned uploads' answers would have come by now: still nothing written
    assert sorted(p.name for p in out.iterdir()) == done
    handler.delay = 0.0
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{12 - len(done)} done, {len(done)} skipped (output exists), 0 failed" in rerun.stderr
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in source.iterdir())


def test_the_command_is_installed_and_its_help_has_examples() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["restore"] == "restore.client.cli:main"
    run = subprocess.run([sys.executable, "-m", "restore.client", "edges", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    assert "--thin" in run.stdout and "restore edges in/ -o out/ --thin" in run.stdout and "RESTORE_API_KEY" in run.stdout
