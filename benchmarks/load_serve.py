"""Bounded load test of `flowerid serve`: N concurrent clients POST photos to /predict on loopback.

It starts `flowerid serve` as a child process on 127.0.0.1 (or uses --url, which must be a
loopback address), sends at most --requests requests for at most --duration seconds from
--clients threads, then stops the server and reports requests/s, latency percentiles,
errors and, for photos in ImageFolder layout, how many were named right. Exit status 1
when any request failed. `--token` sends every request with the server's token (`auto`:
start the server with a new one), to measure what the token check costs.

    python benchmarks/load_serve.py --checkpoint /tmp/runfull/checkpoint.pth \\
        --images /work/shared/data/flowers102/valid --clients 8 --requests 400
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

from flowerid.apps.serve_config import is_loopback  # the server's own rule for what stays on this computer

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def pick_photos(root: Path, limit: int) -> list[tuple[str | None, bytes]]:
    """(expected category or None, bytes): one photo per class folder in turn, up to `limit`."""
    if root.is_file():
        return [(None, root.read_bytes())]
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    if not folders:
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return [(None, p.read_bytes()) for p in files[:limit]]
    per_class = [sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for d in folders]
    photos: list[tuple[str | None, bytes]] = []
    for i in range(max(map(len, per_class), default=0)):
        for d, files in zip(folders, per_class, strict=True):
            if i < len(files) and len(photos) < limit:
                photos.append((d.name, files[i].read_bytes()))
    return photos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(host: str, port: int, proc: subprocess.Popen | None, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode} before it was up")
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            if resp.status == 200:
                return json.loads(resp.read())
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Load:
    """Shared counters of one run; each client thread takes request numbers from `take`."""

    def __init__(self, total: int, deadline: float) -> None:
        self.total = total
        self.deadline = deadline
        self.next = 0
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.right = 0
        self.checked = 0

    def take(self) -> int | None:
        with self.lock:
            if self.next >= self.total or time.monotonic() >= self.deadline:
                return None
            self.next += 1
            return self.next - 1


def client(
    load: Load,
    host: str,
    port: int,
    photos: list[tuple[str | None, bytes, bytes, str]],
    top_k: int,
    token: str | None = None,
) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    while (n := load.take()) is not None:
        expected, _, body, ctype = photos[n % len(photos)]
        t0 = time.perf_counter()
        try:
            conn.request("POST", f"/predict?top_k={top_k}", body=body, headers={"Content-Type": ctype, **auth})
            resp = conn.getresponse()
            payload = resp.read()
            dt = time.perf_counter() - t0
        except (OSError, http.client.HTTPException) as exc:
            with load.lock:
                load.errors.append(f"request {n}: {type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=60)
            continue
        with load.lock:
            if resp.status != 200:
                load.errors.append(f"request {n}: HTTP {resp.status} {payload[:200]!r}")
                continue
            load.latencies.append(dt)
            if expected is not None:
                load.checked += 1
                load.right += json.loads(payload)["predictions"][0]["category"] == expected
    conn.close()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="model to serve (starts `flowerid serve` on loopback)")
    ap.add_argument("--url", help="an already running server instead; must be on loopback")
    ap.add_argument("--images", required=True, type=Path, help="a photo, a folder of photos, or an ImageFolder split")
    ap.add_argument("--photos", type=int, default=64, help="distinct photos to cycle through (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=400, help="stop after this many requests (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=120.0, help="and after this many seconds (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=4, help="untimed requests first (default: %(default)s)")
    ap.add_argument("--threads", type=int, help="server --threads when started here (default: the server's)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--token", help="send this token with every request; `auto`: start the server with a new one")
    ap.add_argument("--json-out", type=Path, help="also write the report here as JSON")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 64 or not 1 <= args.requests <= 100_000 or not 0 < args.duration <= 900:
        ap.error("keep it bounded: 1-64 clients, 1-100000 requests, at most 900 s")
    if bool(args.checkpoint) == bool(args.url):
        ap.error("give --checkpoint (start a server here) or --url (use a running one), not both")

    if args.token == "auto":
        if args.url:
            ap.error("--token auto starts a server with a new token; with --url give the server's token")
        args.token = secrets.token_urlsafe(32)
    proc = server_log = None
    if args.url:
        parts = urllib.parse.urlsplit(args.url)
        host, port = parts.hostname or "", parts.port or 80
        if not is_loopback(host):
            ap.error(f"{host} is not a loopback address; this load test only targets this machine")
    else:
        host, port = "127.0.0.1", free_port()
        cmd = [sys.executable, "-m", "flowerid", "serve", "--checkpoint", args.checkpoint]
        cmd += ["--host", host, "--port", str(port)] + (["--threads", str(args.threads)] if args.threads else [])
        cmd += [f"--token={args.token}"] if args.token else []  # = : a token may start with "-"
        server_log = tempfile.TemporaryFile()  # noqa: SIM115 - closed after the server stops, below
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=server_log)
    try:
        t_start = time.monotonic()
        try:
            health = wait_healthy(host, port, proc, timeout=120)
        except SystemExit:
            if server_log is not None:
                server_log.seek(0)
                sys.stderr.write(server_log.read()[-3000:].decode(errors="replace"))
            raise
        startup = time.monotonic() - t_start
        photos = [(cat, raw, *multipart(raw)) for cat, raw in pick_photos(args.images, args.photos)]
        if not photos:
            ap.error(f"no photos found in {args.images}")
        warm = Load(args.warmup, time.monotonic() + 60)
        client(warm, host, port, photos, args.top_k, args.token)
        if warm.errors:
            print("warm-up failed:", *warm.errors[:3], sep="\n  ", file=sys.stderr)
            return 1

        load = Load(args.requests, time.monotonic() + args.duration)
        threads = [
            threading.Thread(target=client, args=(load, host, port, photos, args.top_k, args.token))
            for _ in range(args.clients)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if server_log is not None:
            server_log.close()

    lat = sorted(load.latencies)
    done = len(lat) + len(load.errors)
    report = {
        "model": health.get("model", {}).get("backbone"),
        "server_threads": health.get("threads"),
        "server_startup_s": round(startup, 2) if proc else None,
        "clients": args.clients,
        "token": bool(args.token),
        "photos": len(photos),
        "mean_upload_kb": round(statistics.mean(len(p[1]) for p in photos) / 1024, 1),
        "requests": done,
        "errors": len(load.errors),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 2) if wall else None,
        "p50_ms": round(percentile(lat, 50) * 1000, 1),
        "p95_ms": round(percentile(lat, 95) * 1000, 1),
        "p99_ms": round(percentile(lat, 99) * 1000, 1),
        "max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "top1_right": f"{load.right}/{load.checked}" if load.checked else None,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    for err in load.errors[:5]:
        print("error:", err, file=sys.stderr)
    return 1 if load.errors else 0


if __name__ == "__main__":
    sys.exit(main())
