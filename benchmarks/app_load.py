"""The app under load: N concurrent simulated users browsing every page over loopback for a fixed time.

    .venv/bin/python benchmarks/app_load.py                       # 20 users, 60 s, bundles traced now
    .venv/bin/python benchmarks/app_load.py --users 5 --seconds 10 --traces out/demo
    .venv/bin/python benchmarks/app_load.py --users 5 --seconds 30 --hostile     # + a hostile client, side by side

What a user does is recorded, not guessed: one real Chromium session (playwright) opens every page of every
bundle and the script records every HTTP request the Dash client makes (page shell, /_dash-layout,
/_dash-dependencies, component suites, and each callback POST with its exact JSON body). N threads then replay
those page visits in random order against `workbench app` running in its own process (so the load generator
does not share the server's interpreter). An error is a failed connection, a status >= 400, or a callback
answer carrying the app's "internal error" panel. Prints a table of error count and latency percentiles.

--hostile runs two phases of --seconds each on the same server (trace form on): the users alone, then the
users beside hostile clients that loop over what issue reports found: trace-form map specs that expand to
millions of indices, 7.5 MB uploads of fresh random pixels (each a new file), a 30000 x 30000 PNG, and as many
trace jobs as the queue takes. It samples the server's RSS every 0.1 s and prints both phases side by side:
the users' latency percentiles, their ratio, the server's peak RSS, and what the hostile requests got.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
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


def start_server(traces: Path, *, trace_form: bool = False) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "workbench.cli.main", "app", "--traces", str(traces),
                                "--port", "0", *([] if trace_form else ["--no-trace"])], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)
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


# ---------------------------------------------------------------------------------------------- hostile client
HUGE_SPECS = ["0-30000000", "0:0-2000000", "0-99999999999999999999", "9" * 5000]


def _callback(outputs: list[tuple[str, str]], inputs: list[tuple[str, str, object]],
              state: list[tuple[str, str, object]]) -> bytes:
    """A Dash callback POST body with two or more outputs, the shape the browser sends."""
    body = {"output": ".." + "...".join(f"{i}.{p}" for i, p in outputs) + "..",
            "outputs": [{"id": i, "property": p} for i, p in outputs],
            "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
            "state": [{"id": i, "property": p, "value": v} for i, p, v in state],
            "changedPropIds": [f"{inputs[0][0]}.{inputs[0][1]}"]}
    return json.dumps(body).encode()


def submit_body(maps: str | None, model: str = "tiny-gpt2", new_tokens: int = 8, image: str | None = None) -> bytes:
    return _callback([("runs-job", "data"), ("runs-interval", "disabled"), ("runs-form-message", "children"),
                      ("runs-progress-box", "style")], [("runs-submit", "n_clicks", 1)],
                     [("runs-model", "value", model), ("runs-prompt", "value", "The cat sat on the mat. " * 8),
                      ("runs-new-tokens", "value", new_tokens), ("runs-maps", "value", maps),
                      ("runs-name", "value", None), ("runs-image", "data", image)])


def upload_body(data: bytes, filename: str) -> bytes:
    contents = "data:image/png;base64," + base64.b64encode(data).decode()
    return _callback([("runs-image", "data"), ("runs-upload-status", "children")],
                     [("runs-upload", "contents", contents)], [("runs-upload", "filename", filename)])


def noise_png(seed: int, side: int = 1580) -> bytes:
    """Random pixels: PNG cannot compress them, so the file is about side * side * 3 bytes (7.5 MB here)."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(side, side, 3) * 255).astype("uint8")).save(
        buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def bomb_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def hostile_client(base: str, deadline: float, tally: collections.Counter, latency: list[float],
                   files: tuple[list[bytes], bytes]) -> None:
    """Loop over hostile requests; tally what each got (refused with a panel, accepted, HTTP error)."""
    parts = urlsplit(base)
    (noise, bomb), counter = files, 0
    while time.monotonic() < deadline:
        counter += 1
        action = counter % 4
        if action == 0:
            label, body = "huge map spec", submit_body(HUGE_SPECS[counter // 4 % len(HUGE_SPECS)])
        elif action == 1:
            label, body = "7.5 MB upload", upload_body(noise[counter // 4 % len(noise)], "noise.png")
        elif action == 2:
            label, body = "30000 x 30000 upload", upload_body(bomb, "bomb.png")
        else:
            label, body = "trace job (maps all)", submit_body("all")
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        started = time.perf_counter()
        try:
            connection.request("POST", "/_dash-update-component", body=body,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            outcome = f"HTTP {response.status}" if response.status >= 400 else \
                "refused (panel)" if b"wb-error" in data else "accepted"
        except (OSError, http.client.HTTPException) as error:
            outcome = type(error).__name__
        finally:
            connection.close()
        latency.append(time.perf_counter() - started)
        tally[(label, outcome)] += 1


class RssSampler(threading.Thread):
    """Peak resident memory of a process, sampled every `every` seconds from /proc."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.last = pid, every, 0, 0
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                with open(f"/proc/{self.pid}/status") as status:
                    kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                return
            self.last, self.peak = kb * 1024, max(self.peak, kb * 1024)
            time.sleep(self.every)

    def reset(self) -> None:
        self.peak = self.last


def run_phase(base: str, visits, users: int, seconds: float, sampler: RssSampler, hostile: int = 0):
    """(Results of the users, hostile tally, hostile latencies, elapsed, server peak RSS) of one timed phase."""
    results, tally, hostile_latency = Results(), collections.Counter(), []
    # Files made before the clock starts (the load generator shares the server's cores): 12 distinct uploads,
    # more than the uploads folder keeps, so every round stores a new file.
    files = ([noise_png(seed) for seed in range(12)], bomb_png()) if hostile else None
    deadline = time.monotonic() + seconds
    sampler.reset()
    threads = [threading.Thread(target=user, args=(base, visits, deadline, results, seed)) for seed in range(users)]
    threads += [threading.Thread(target=hostile_client, args=(base, deadline, tally, hostile_latency, files))
                for _ in range(hostile)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, tally, hostile_latency, time.monotonic() - started, (sampler.peak, sampler.last)


def print_side_by_side(phases: dict, traces: Path) -> None:
    print("\n| users' requests | phase | count | errors | p50 ms | p95 ms | p99 ms | server RSS MB: peak / end |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (results, _, _, elapsed, (peak, end)) in phases.items():
        every = results.latency["GET"] + results.latency["POST"]
        for label, values in (("callbacks (POST)", results.latency["POST"]), ("all", every)):
            print(f"| {label} | {name} | {len(values)} | {len(results.errors)} | {1000 * percentile(values, 50):.0f} | "
                  f"{1000 * percentile(values, 95):.0f} | {1000 * percentile(values, 99):.0f} | "
                  f"{peak / 2**20:.0f} / {end / 2**20:.0f} |")
    (quiet, *_), (loud, tally, hostile_latency, *_) = phases["users alone"], phases["with hostile client"]
    for label in ("POST", "all"):
        a = quiet.latency["POST"] if label == "POST" else quiet.latency["GET"] + quiet.latency["POST"]
        b = loud.latency["POST"] if label == "POST" else loud.latency["GET"] + loud.latency["POST"]
        print(f"ratio hostile / alone, {label}: p50 {percentile(b, 50) / percentile(a, 50):.2f}x, "
              f"p95 {percentile(b, 95) / percentile(a, 95):.2f}x")
    print("\n| hostile request | outcome | count |\n|---|---|---|")
    for (label, outcome), count in sorted(tally.items()):
        print(f"| {label} | {outcome} | {count} |")
    uploads = traces / ".uploads"
    stored = sum(p.stat().st_size for p in uploads.iterdir()) if uploads.is_dir() else 0
    print(f"hostile requests: p50 {1000 * percentile(hostile_latency, 50):.0f} ms, max "
          f"{1000 * max(hostile_latency, default=0):.0f} ms; uploads folder at the end {stored / 2**20:.1f} MB; "
          f"bundles written by trace jobs {len(list(traces.glob('tiny-gpt2-*.wbtrace')))}")


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
    parser.add_argument("--hostile", type=int, nargs="?", const=1, default=0, metavar="N",
                        help="also run a phase with N hostile clients (default 1) and compare side by side")
    args = parser.parse_args()
    if args.hostile and args.traces is not None:
        parser.error("--hostile writes uploads and bundles: run it on the bundles traced now (no --traces)")
    with tempfile.TemporaryDirectory() as scratch:
        traces = args.traces or Path(scratch)
        bundles = build_bundles(traces) if args.traces is None else \
            sorted(p.relative_to(traces).as_posix()[:-8] for p in traces.rglob("*.wbtrace"))[:3]
        print(f"machine: {machine()}", file=sys.stderr)
        process, base = start_server(traces, trace_form=bool(args.hostile))
        try:
            visits = record(base, page_urls(bundles))
            n_requests = sum(len(v) for v in visits)
            print(f"recorded {len(visits)} page visits, {n_requests} requests; replaying with {args.users} users for "
                  f"{args.seconds:.0f} s", file=sys.stderr)
            if args.hostile:
                sampler = RssSampler(process.pid)
                sampler.start()
                phases = {"users alone": run_phase(base, visits, args.users, args.seconds, sampler),
                          "with hostile client": run_phase(base, visits, args.users, args.seconds, sampler,
                                                           hostile=args.hostile)}
                sampler.running = False
                print_side_by_side(phases, traces)
                errors = [e for phase in phases.values() for e in phase[0].errors]
                for error in sorted(set(errors))[:10]:
                    print(f"error: {error}", file=sys.stderr)
                sys.exit(1 if errors else 0)
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
