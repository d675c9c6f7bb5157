"""The app under load: N concurrent simulated users browsing every page over loopback for a fixed time.

    .venv/bin/python benchmarks/app_load.py                       # 20 users, 60 s, bundles traced now
    .venv/bin/python benchmarks/app_load.py --users 5 --seconds 10 --traces out/demo

What a user does is recorded, not guessed: one real Chromium session (playwright) opens every page of every
bundle and the script records every HTTP request the Dash client makes (page shell, /_dash-layout,
/_dash-dependencies, component suites, and each callback POST with its exact JSON body). N threads then replay
those page visits in random order against `workbench app` running in its own process (so the load generator
does not share the server's interpreter). An error is a failed connection, a status >= 400, or a callback
answer carrying the app's "internal error" panel. Prints a table of error count and latency percentiles.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]


def build_bundles(folder: Path) -> list[str]:
    """tiny-llama with maps, tiny-llama statistics only, tiny-llava with its image (what the app tests use)."""
    import hashlib

    import numpy as np
    import torch
    from PIL import Image

    import workbench

    torch.set_num_threads(1)
    workbench.trace("tiny-llama", "The cat sat on the mat and looked at the dog", max_new_tokens=5,
                    maps="all").save(folder / "llama-maps.wbtrace")
    workbench.trace("tiny-llama", "Anna's code is 4417. What is Anna's code?", max_new_tokens=4).save(
        folder / "llama-stats.wbtrace")
    (folder / "images").mkdir()
    pixels = (np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")
    image = folder / "images" / "picture.png"
    Image.fromarray(pixels).save(image)
    named = folder / "images" / f"{hashlib.sha256(image.read_bytes()).hexdigest()}.png"
    image.rename(named)
    workbench.trace("tiny-llava", "Describe the picture", image=str(named), max_new_tokens=3).save(
        folder / "llava.wbtrace")
    return ["llama-maps", "llama-stats", "llava"]


def start_server(traces: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "workbench.cli.main", "app", "--traces", str(traces),
                                "--port", "0", "--no-trace"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env)
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        process.kill()
        raise SystemExit(f"the app did not start: {line!r}")
    return process, f"http://127.0.0.1:{match.group(1)}"


def page_urls(bundles: list[str]) -> list[str]:
    urls = ["/"]
    for bundle in bundles:
        urls += [f"/model?bundle={bundle}", f"/head?bundle={bundle}&layer=1&head=0&pos=4",
                 f"/token?bundle={bundle}&pos=5", f"/circuits?bundle={bundle}", f"/hallucination?bundle={bundle}"]
    urls.append(f"/image?bundle={bundles[-1]}&layer=0&head=0")
    return urls


def record(base: str, urls: list[str]) -> list[list[tuple[str, str, bytes | None, str]]]:
    """Per page visit: the (method, path, body, content type) of every request Chromium made to the app."""
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
    visits = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        for url in urls:
            page = browser.new_page()  # a fresh page: nothing cached, like a new user
            seen: list[tuple[str, str, bytes | None, str]] = []
            page.on("request", lambda request, seen=seen: seen.append((
                request.method, urlsplit(request.url)._replace(scheme="", netloc="").geturl(),
                request.post_data_buffer, request.headers.get("content-type", "")))
                if request.url.startswith(base) else None)
            page.goto(base + url, wait_until="networkidle", timeout=120_000)
            page.wait_for_timeout(500)  # callbacks chained after the first render
            visits.append(seen)
            page.close()
        browser.close()
    return visits


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {"GET": [], "POST": []}
        self.errors: list[str] = []

    def add(self, method: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latency[method].append(seconds)
            if error:
                self.errors.append(error)


def one_request(host: str, port: int, method: str, path: str, body, content_type: str) -> str | None:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.status >= 400:
            return f"{method} {path[:60]}: HTTP {response.status}"
        if method == "POST" and b"internal error" in data:
            return f"POST {path[:60]}: internal error in the answer"
        return None
    except (OSError, http.client.HTTPException) as error:
        return f"{method} {path[:60]}: {type(error).__name__}"
    finally:
        connection.close()


def user(base: str, visits, deadline: float, results: Results, seed: int) -> None:
    parts = urlsplit(base)
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        for method, path, body, content_type in rng.choice(visits):
            if time.monotonic() >= deadline:
                return
            started = time.perf_counter()
            error = one_request(parts.hostname, parts.port, method, path, body, content_type)
            results.add(method, time.perf_counter() - started, error)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, {platform.system()}, load average {load:.1f} at the start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--traces", type=Path, help="a folder of bundles [default: tiny bundles traced now]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        traces = args.traces or Path(scratch)
        bundles = build_bundles(traces) if args.traces is None else \
            sorted(p.relative_to(traces).as_posix()[:-8] for p in traces.rglob("*.wbtrace"))[:3]
        print(f"machine: {machine()}", file=sys.stderr)
        process, base = start_server(traces)
        try:
            visits = record(base, page_urls(bundles))
            n_requests = sum(len(v) for v in visits)
            print(f"recorded {len(visits)} page visits, {n_requests} requests; replaying with {args.users} users for "
                  f"{args.seconds:.0f} s", file=sys.stderr)
            results = Results()
            deadline = time.monotonic() + args.seconds
            threads = [threading.Thread(target=user, args=(base, visits, deadline, results, seed))
                       for seed in range(args.users)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
        finally:
            process.terminate()
            process.wait(timeout=30)
    every = results.latency["GET"] + results.latency["POST"]
    print(f"\n{args.users} users, {elapsed:.0f} s, {len(every)} requests ({len(every) / elapsed:.1f}/s), "
          f"errors {len(results.errors)}\n")
    print("| requests | count | errors | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for label, values, errors in (
            ("page shells, layouts, scripts (GET)", results.latency["GET"],
             sum(e.startswith("GET") for e in results.errors)),
            ("callbacks (POST)", results.latency["POST"], sum(e.startswith("POST") for e in results.errors)),
            ("all", every, len(results.errors))):
        print(f"| {label} | {len(values)} | {errors} | {1000 * percentile(values, 50):.0f} | "
              f"{1000 * percentile(values, 95):.0f} | {1000 * percentile(values, 99):.0f} | "
              f"{1000 * max(values, default=float('nan')):.0f} |")
    for error in sorted(set(results.errors))[:10]:
        print(f"error: {error}", file=sys.stderr)
    if results.errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
