"""Hostile clients against `bertforge serve`: issue 13's target for the HTTP service.

    PYTHONPATH=src python benchmarks/server_hostile.py [--model DIR] [--slow 200] [--body-mb 300]

Starts the server as a subprocess on a free 127.0.0.1 port with its default limits (a small random
fill-mask model unless --model is given), measures its idle resident memory, then at the same time:
1. opens `--slow` connections that never finish: half trickle their headers, half (headers complete)
   trickle their body, one byte per connection per second;
2. sends one `--body-mb` chunked request body to /embed, as fast as loopback allows, until the server
   answers or hangs up;
3. times GET /health on a fresh connection every 0.5 s for 5 s.
It then waits for the server to close the slow connections (head and body deadlines). Prints the numbers and
the targets — peak server memory below 2x idle, every /health within 1 s — and exits 1 if one is missed.
Bounded: at most 1000 connections and 1024 MB of body; only 127.0.0.1 is contacted; everything stops
within about a minute and the server is terminated.
"""

from __future__ import annotations

import argparse
import http.client
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"


def status_kb(pid: int, field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def health_seconds(port: int) -> float:
    start = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
    except (OSError, http.client.HTTPException):
        ok = False
    return time.perf_counter() - start if ok else float("inf")


def start_server(model: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "bertforge", "serve", "--model", model, "--host", HOST, "--port", str(port),
               "--threads", "1"]
    process = subprocess.Popen(command)
    for _ in range(600):
        if health_seconds(port) < 5:
            return process, port
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}")
        time.sleep(0.1)
    process.terminate()
    sys.exit("server did not answer /health within 60 s")


class SlowClients:
    """Connections that never complete a request; records when the server closes each one."""

    def __init__(self, port: int, count: int) -> None:
        self.opened = time.perf_counter()
        self.sockets = [socket.create_connection((HOST, port), timeout=5) for _ in range(count)]
        for i, sock in enumerate(self.sockets):
            if i % 2:  # headers complete, body trickled
                sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100000\r\n\r\n")
            else:  # headers trickled
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            sock.setblocking(False)
        self.closed_after: dict[int, float] = {}
        self.answers: dict[bytes, int] = {}
        self.thread = threading.Thread(target=self.trickle, daemon=True)

    def trickle(self, limit_s: float = 60.0) -> None:
        while len(self.closed_after) < len(self.sockets) and time.perf_counter() - self.opened < limit_s:
            for i, sock in enumerate(self.sockets):
                if i in self.closed_after:
                    continue
                try:
                    readable = select.select([sock], [], [], 0)[0]
                    data = sock.recv(4096) if readable else None
                    if data is None:
                        sock.send(b"x")
                        continue
                    if data:
                        status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/") else b"?"
                        self.answers[status] = self.answers.get(status, 0) + 1
                    self.closed_after[i] = time.perf_counter() - self.opened
                except BlockingIOError:
                    continue
                except OSError:
                    self.closed_after[i] = time.perf_counter() - self.opened
            time.sleep(1.0)
        for sock in self.sockets:
            sock.close()


def send_chunked(port: int, megabytes: int) -> tuple[int, str, float]:
    """Bytes of body sent before the server answered or hung up, its status line, and the seconds taken."""
    chunk = b"%x\r\n%s\r\n" % (2**20, b"x" * 2**20)
    sent, start = 0, time.perf_counter()
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < megabytes * 2**20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += 2**20
            if sent >= megabytes * 2**20:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server hung up
            pass
        try:
            answer = sock.recv(4096).split(b"\r\n", 1)[0].decode()
        except OSError as exc:
            answer = f"no answer ({exc.__class__.__name__})"
    return sent, answer or "no answer (closed)", time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: a small random fill-mask model)")
    parser.add_argument("--slow", type=int, default=200, help="slow connections (at most 1000)")
    parser.add_argument("--body-mb", type=int, default=300, help="chunked body size in MB (at most 1024)")
    args = parser.parse_args()
    slow, body_mb = min(args.slow, 1000), min(args.body_mb, 1024)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from bertforge.heads import BertForMaskedLM
            from bertforge.inference.tiny import build

            build(BertForMaskedLM, tmp, seed=0)
            model = tmp
        process, port = start_server(model)
        try:
            for _ in range(20):
                health_seconds(port)
            idle_kb = status_kb(process.pid, "VmRSS")

            clients = SlowClients(port, slow)
            clients.thread.start()
            latencies: list[float] = []

            def probe() -> None:
                for _ in range(10):
                    latencies.append(health_seconds(port))
                    time.sleep(0.5)

            sampled_kb, done = [idle_kb], threading.Event()

            def sample() -> None:
                while not done.is_set():
                    sampled_kb.append(status_kb(process.pid, "VmRSS"))
                    time.sleep(0.01)

            prober, sampler = threading.Thread(target=probe, daemon=True), threading.Thread(target=sample, daemon=True)
            prober.start()
            sampler.start()
            sent, answer, body_s = send_chunked(port, body_mb)
            prober.join(30)
            clients.thread.join(70)
            done.set()
            sampler.join()
            peak_kb = status_kb(process.pid, "VmHWM")
            after_health = health_seconds(port)
        finally:
            process.terminate()
            process.wait(10)

    held = sorted(clients.closed_after.values())
    worst = max(latencies)
    print(f"server idle RSS                {idle_kb / 1024:8.1f} MiB")
    print(f"server peak RSS under attack   {max(sampled_kb) / 1024:8.1f} MiB   {max(sampled_kb) / idle_kb:.2f}x idle "
          "(sampled every 10 ms)")
    print(f"server peak RSS (VmHWM)        {peak_kb / 1024:8.1f} MiB   {peak_kb / idle_kb:.2f}x idle (target < 2x; "
          "a lifetime peak, start-up included)")
    print(f"chunked body ({body_mb} MB)       {sent / 2**20:8.1f} MiB sent in {body_s:.2f} s before: {answer}")
    print(f"/health with {slow} slow conns  median {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {worst * 1000:.1f} ms over {len(latencies)} probes (target < 1000 ms)")
    print(f"slow connections closed        {len(held)}/{slow}; held median {statistics.median(held):.1f} s, "
          f"max {held[-1]:.1f} s; answers seen {({k.decode(): v for k, v in clients.answers.items()})}"
          if held else f"slow connections closed        0/{slow}")
    print(f"/health afterwards             {after_health * 1000:.1f} ms")
    ok = peak_kb < 2 * idle_kb and worst < 1.0 and len(held) == slow
    print("targets met" if ok else "TARGET MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
