"""Issue 31 under attack: 32 honest clients while one attacker tries each cheap denial of service in turn.

    python -m bench.abuse_bench                     # 30 s per phase: baselines, then every attack
    python -m bench.abuse_bench --seconds 20 --attacks slow-uploads idle-sockets

One ``python -m restore.service`` on loopback (bench.service_bench.server) with default limits, the
gray and colour blind DnCNN and 33 API keys. Every client has its own loopback address
(127.0.1.N; the attacker 127.0.2.1, the health checker 127.0.3.1) and its own key, as separate
machines would. The honest clients post 48x48 gray PNGs in a loop to /denoise (or, for the
job-store attack, submit a job, poll it and fetch its result). Each attack runs for the phase's
length while the honest clients run, then stops; the whole run stops by itself.

Attacks (the reproducers of issue 31):

* ``short-jpeg``: jobs with a 629-byte JPEG declaring 10000x10000 (its data ends after 16x16);
* ``zero-png``: one job with a legal all-zero 100 MP gray PNG (0.1 MB), the most a client may hold,
  and more such jobs while it runs; cancelled when the phase ends;
* ``slow-uploads``: 64 connections sending headers for a 1 MB body, then a byte every 2 s;
* ``spp-tiff``: TIFFs with 1000 and 65535 samples per pixel, back to back;
* ``idle-sockets``: 300 connections that send nothing, reopened as the server closes them;
* ``job-store``: one key submitting jobs as fast as it can and never fetching them.

Printed: a markdown table with, per phase, the honest requests' success rate and p50/p99
latency (and the ratio to the same clients' run without attack), the server's peak RSS during
the phase, and how often /healthz (polled every 0.5 s on a new connection, as an orchestrator
does) answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import tifffile
from PIL import Image

from bench.service_bench import png, scene, server

HONEST = 32
KEYS = [f"honest-{i}" for i in range(HONEST)] + ["attacker"]
ATTACKER_ADDRESS = "127.0.2.1"
HEALTH_ADDRESS = "127.0.3.1"
ATTACKS = ("short-jpeg", "zero-png", "slow-uploads", "spp-tiff", "idle-sockets", "job-store")


def address(i: int) -> str:
    return f"127.0.1.{i + 1}"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- what the attacker sends --------------------------------------------------------------------------------------

def short_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buffer, "JPEG", quality=50)
    data = bytearray(buffer.getvalue())
    frame = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, 10000, 10000)
    return bytes(data)


def zero_png(side: int = 10000) -> bytes:
    """A valid gray PNG of side x side zeros: every row is a filter byte and zeros, compressed ~1000:1."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def spp_tiffs() -> list[bytes]:
    small = io.BytesIO()
    tifffile.imwrite(
        small, np.zeros((64, 64, 1000), np.uint16), photometric="minisblack", planarconfig="contig", compression="zlib"
    )
    big = bytearray(small.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(big))) as tif:
        tag = tif.pages.first.tags["SamplesPerPixel"]
    struct.pack_into("<H", big, tag.valueoffset, 65535)  # the header now claims 65535 samples
    return [small.getvalue(), bytes(big)]


# --- measurement --------------------------------------------------------------------------------------------------

@dataclass
class Phase:
    name: str
    mode: str  # "sync" or "jobs"
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    health: list[int] = field(default_factory=list)  # status per probe, 0 for no answer
    peak_rss_gib: float = 0.0
    attack_notes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.latencies) + sum(self.failures.values())


def rss_gib(pid: int) -> float:
    line = next(s for s in Path(f"/proc/{pid}/status").read_text().splitlines() if s.startswith("VmRSS"))
    return int(line.split()[1]) / 2**20


def sample_rss(pid: int, phase: Phase, stop: threading.Event) -> None:
    while not stop.wait(0.05):
        try:
            phase.peak_rss_gib = max(phase.peak_rss_gib, rss_gib(pid))
        except (FileNotFoundError, StopIteration):
            return


def client(source: str, *, timeout: float, keep_alive: bool = True, key: str | None = None) -> httpx.AsyncClient:
    """A client bound to its own loopback address. Plain HTTP, so no CA bundle is loaded (which
    costs a second of CPU per client on a loaded machine); built once, before any phase starts."""
    limits = httpx.Limits() if keep_alive else httpx.Limits(max_keepalive_connections=0)
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=False, limits=limits)
    return httpx.AsyncClient(transport=transport, timeout=timeout, headers=auth(key) if key else None)


async def honest(http: httpx.AsyncClient, url: str, phase: Phase, deadline: float, body: bytes) -> None:
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            ok = await (one_job(http, url, body) if phase.mode == "jobs" else one_request(http, url, body))
        except httpx.HTTPError as exc:
            ok = type(exc).__name__
        if ok is True:
            phase.latencies.append(time.perf_counter() - started)
        else:
            phase.failures[str(ok)] = phase.failures.get(str(ok), 0) + 1
            await asyncio.sleep(0.2)  # a refused client backs off a little, as a polite one would


async def one_request(http: httpx.AsyncClient, url: str, body: bytes) -> bool | int:
    response = await http.post(f"{url}/denoise", content=body, headers={"Content-Type": "image/png"})
    return True if response.status_code == 200 else response.status_code


async def one_job(http: httpx.AsyncClient, url: str, body: bytes) -> bool | int:
    submitted = await http.post(f"{url}/v1/jobs/denoise", content=body, headers={"Content-Type": "image/png"})
    if submitted.status_code != 202:
        return submitted.status_code
    location = f"{url}{submitted.headers['location']}"
    while (job := await http.get(location)).status_code == 200 and job.json()["status"] in ("queued", "running"):
        await asyncio.sleep(0.05)
    result = await http.get(f"{location}/result")
    return True if result.status_code == 200 else result.status_code


async def health_checks(http: httpx.AsyncClient, url: str, phase: Phase, deadline: float) -> None:
    """/healthz every 0.5 s on a new connection each time (no keep-alive), 2 s timeout, as a kubelet probes."""
    while time.monotonic() < deadline:
        try:
            phase.health.append((await http.get(f"{url}/healthz")).status_code)
        except httpx.HTTPError:
            phase.health.append(0)
        await asyncio.sleep(0.5)


# --- attacks ------------------------------------------------------------------------------------------------------

Attack = Callable[[str, Phase, float], Awaitable[None]]


def attacker() -> httpx.AsyncClient:
    return client(ATTACKER_ADDRESS, timeout=120, key="attacker")


def note(phase: Phase, what: str) -> None:
    phase.attack_notes[what] = phase.attack_notes.get(what, 0) + 1


async def post_loop(url: str, phase: Phase, deadline: float, bodies: list[bytes], path: str) -> None:
    async with attacker() as http:
        while time.monotonic() < deadline:
            for body in bodies:
                try:
                    note(phase, str((await http.post(f"{url}{path}", content=body)).status_code))
                except httpx.HTTPError as exc:
                    note(phase, type(exc).__name__)


async def attack_short_jpeg(url: str, phase: Phase, deadline: float) -> None:
    await post_loop(url, phase, deadline, [short_jpeg()], "/v1/jobs/denoise")


async def attack_spp_tiff(url: str, phase: Phase, deadline: float) -> None:
    await post_loop(url, phase, deadline, spp_tiffs(), "/denoise")


async def attack_zero_png(url: str, phase: Phase, deadline: float) -> None:
    body = zero_png()
    accepted: list[str] = []
    async with attacker() as http:
        while time.monotonic() < deadline:
            response = await http.post(f"{url}/v1/jobs/denoise", content=body)
            note(phase, str(response.status_code))
            if response.status_code == 202:
                accepted.append(response.headers["location"])
            await asyncio.sleep(1.0)
        for location in accepted:  # the attacker's jobs would run for many minutes: cancel them
            await http.delete(f"{url}{location}")


async def attack_job_store(url: str, phase: Phase, deadline: float) -> None:
    body = png(scene(48, 48, 1, seed=9))

    async def flood() -> None:
        async with attacker() as http:
            while time.monotonic() < deadline:
                status = (await http.post(f"{url}/v1/jobs/denoise", content=body)).status_code
                note(phase, str(status))
                if status != 202:
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(flood() for _ in range(4)))


def open_socket(port: int) -> socket.socket | None:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((ATTACKER_ADDRESS, 0))
    try:
        sock.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    except OSError:
        sock.close()
        return None
    return sock


async def attack_idle_sockets(url: str, phase: Phase, deadline: float) -> None:
    """300 connections that never send a byte; each one the server closes is opened again."""
    port = int(url.rsplit(":", 1)[1])
    socks: list[socket.socket] = []
    try:
        while time.monotonic() < deadline:
            alive = []
            for sock in socks:
                try:
                    closed = sock.recv(65536, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed or _answered(sock):
                    note(phase, "closed by server")
                    sock.close()
                else:
                    alive.append(sock)
            socks = alive
            for _ in range(min(300 - len(socks), 60)):  # at most 300 new connections a second
                sock = open_socket(port)
                if sock is None:
                    break
                socks.append(sock)
                note(phase, "opened")
            await asyncio.sleep(0.2)
    finally:
        for sock in socks:
            sock.close()


def _answered(sock: socket.socket) -> bool:
    """The server wrote a refusal (503 or 408) and will close: read it so the socket can go."""
    try:
        return bool(sock.recv(65536, socket.MSG_DONTWAIT))
    except (BlockingIOError, OSError):
        return False


async def attack_slow_uploads(url: str, phase: Phase, deadline: float) -> None:
    """64 connections that send headers for a 1 MB body, then one byte every 2 s; reopened when refused or cut off."""
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    head = (
        f"POST /denoise HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer attacker\r\n"
        "Content-Type: image/png\r\nContent-Length: 1000000\r\n\r\n"
    ).encode()

    async def uploader() -> None:
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER_ADDRESS, 0))
            except OSError:
                note(phase, "connect failed")
                await asyncio.sleep(0.5)
                continue
            try:
                writer.write(head)
                while time.monotonic() < deadline:
                    answer = await _read_within(reader, 2.0)
                    if answer:  # refused (503) or cut off (408): try again a little later
                        note(phase, answer.split(b" ", 2)[1].decode(errors="replace"))
                        await asyncio.sleep(0.5)
                        break
                    writer.write(b"\0")
                    await writer.drain()
            except OSError:
                note(phase, "reset")
                await asyncio.sleep(0.5)
            finally:
                writer.close()

    await asyncio.gather(*(uploader() for _ in range(64)))


async def _read_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(4096), seconds)
    except asyncio.TimeoutError:
        return b""


ATTACK_FUNCTIONS: dict[str, Attack] = {
    "short-jpeg": attack_short_jpeg, "zero-png": attack_zero_png, "slow-uploads": attack_slow_uploads,
    "spp-tiff": attack_spp_tiff, "idle-sockets": attack_idle_sockets, "job-store": attack_job_store,
}


# --- the run ------------------------------------------------------------------------------------------------------

@dataclass
class Clients:
    honest: list[httpx.AsyncClient]
    health: httpx.AsyncClient


async def run_phase(
    url: str, pid: int, clients: Clients, phase: Phase, seconds: float, attack: Attack | None
) -> Phase:
    body = png(scene(48, 48, 1, seed=5))
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(pid, phase, stop), daemon=True)
    sampler.start()
    deadline = time.monotonic() + seconds
    tasks = [honest(http, url, phase, deadline, body) for http in clients.honest]
    tasks.append(health_checks(clients.health, url, phase, deadline))
    if attack is not None:
        tasks.append(attack(url, phase, deadline))
    await asyncio.gather(*tasks)
    stop.set()
    sampler.join()
    return phase


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(phases: list[Phase], seconds: float) -> str:
    base = {p.mode: p for p in phases if p.name.startswith("no attack")}
    lines = [
        f"| phase ({seconds:g} s) | honest success | p50 / p99 (s) | p99 vs no attack | peak RSS (GiB) | /healthz 200 | attacker's answers |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase in phases:
        ok = len(phase.latencies)
        p50, p99 = percentile(phase.latencies, 50), percentile(phase.latencies, 99)
        reference = percentile(base[phase.mode].latencies, 99) if phase.mode in base else float("nan")
        failures = ", ".join(f"{k}: {v}" for k, v in sorted(phase.failures.items()))
        healthy = sum(1 for status in phase.health if status == 200)
        other = Counter("no answer in 2 s" if status == 0 else str(status) for status in phase.health if status != 200)
        health = f"{healthy}/{len(phase.health)}" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(other.items()))})" if other else "")
        notes = ", ".join(f"{k}: {v}" for k, v in sorted(phase.attack_notes.items())) or "-"
        lines.append(
            f"| {phase.name} | {ok}/{phase.total} = {100 * ok / max(phase.total, 1):.1f}%"
            f"{f' ({failures})' if failures else ''} | {p50:.2f} / {p99:.2f} | {p99 / reference:.2f}x | "
            f"{phase.peak_rss_gib:.2f} | {health} | {notes} |"
        )
    return "\n".join(lines)


async def main_async(url: str, pid: int, seconds: float, attacks: list[str]) -> list[Phase]:
    clients = Clients(
        [client(address(i), timeout=120, keep_alive=False, key=KEYS[i]) for i in range(HONEST)],
        client(HEALTH_ADDRESS, timeout=2, keep_alive=False),
    )
    phases = [await run_phase(url, pid, clients, Phase("no attack (sync)", "sync"), seconds, None)]
    for name in attacks:
        mode = "jobs" if name == "job-store" else "sync"
        if mode == "jobs" and not any(p.mode == "jobs" for p in phases):
            phases.append(await run_phase(url, pid, clients, Phase("no attack (jobs)", "jobs"), seconds, None))
        phases.append(await run_phase(url, pid, clients, Phase(name, mode), seconds, ATTACK_FUNCTIONS[name]))
        await asyncio.sleep(2.0)  # let the server settle (closed sockets, cancelled jobs) between phases
    for http in [*clients.honest, clients.health]:
        await http.aclose()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--attacks", nargs="*", choices=ATTACKS, default=list(ATTACKS))
    args = parser.parse_args()
    env = {"RESTORE_API_KEYS": ",".join(KEYS), "RESTORE_FORWARDED_ALLOW_IPS": ""}
    with server("dncnn-gray-blind,dncnn-color-blind", **env) as (url, process):
        phases = asyncio.run(main_async(url, process.pid, args.seconds, args.attacks))
    print(report(phases, args.seconds))


if __name__ == "__main__":
    main()
