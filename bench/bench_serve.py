"""Search server benchmark (issue 14): queries/s and latency with 1, 10 and 100 concurrent clients, and a burst.

The collection is demo-like: the demo's 4-frame model architecture (configs/demo_4f.json: a 64 px ViT of 3
blocks of width 128; the demo's text model, a 2-layer BERT of width 128 with bert-base-uncased's vocabulary),
random weights (a forward pass costs the same whatever the weights), and 192 generated clips (the demo's
held-out set has 192) extracted and indexed with the library. The server is the real command,
`python -m launch.search serve COLL`, in a process of its own; the clients are threads of this process.

1. steady load: C clients (1, 10, 100), each on its own keep-alive connection, ask for the results page
   (`/?q=...&k=12`, what the browser asks for) one after another for --seconds, with queries cycling over 128
   demo captions ("a red square moves to the left", ...). Queries/s = complete 200 answers / seconds; latency
   percentiles over every request. An answer counts only if it is a complete page (ends with </html>).
2. burst: --burst clients (200) each open a new connection and send one query at the same moment (what a
   page of users pressing Enter together does); the slowest answer and how many took over 1 s and 30 s.

    python bench/bench_serve.py                                 # ~3 min on 2 shared cores
    python bench/bench_serve.py --server-repo /tmp/old --no-server-options   # an older checkout's server

Prints one JSON line per measurement (docs/bench/search.md collects them).
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench_search import emit, emit_machine, write_clips  # noqa: E402  (bench/ is this script's folder)

SHAPES = ("square", "triangle", "cross", "bar")
COLOURS = ("red", "green", "blue", "yellow")
MOTIONS = (
    "moves to the left",
    "moves to the right",
    "moves up",
    "moves down",
    "grows",
    "shrinks",
    "rotates",
    "stands still",
)
QUERIES = [f"a {c} {s} {m}" for s in SHAPES for c in COLOURS for m in MOTIONS] + [
    f"the {c} {s} {m} slowly" for s in SHAPES for c in COLOURS for m in MOTIONS
]


def demo_like_collection(root: Path, clips: int) -> Path:
    """Weights (our portable folder) + shards + extracted features + index, as a user of the demo has them."""
    from models import FrozenInTime, ModelConfig, save_pretrained
    from models.tiny import write_tiny_text_model
    from pipeline.demo.run import DEMO_TEXT_MODEL
    from pipeline.search.features import extract_features, merge_parts
    from pipeline.search.index import build_collection_index
    from pipeline.search.inference import Embedder

    model = json.loads((REPO / "configs" / "demo_4f.json").read_text())["model"]
    model["text"]["model"] = str(write_tiny_text_model(root / "text_model", **DEMO_TEXT_MODEL))
    cfg = ModelConfig.from_dict(model)
    torch.manual_seed(0)
    weights = save_pretrained(FrozenInTime(cfg), cfg, root / "weights")
    shards = write_clips(root / "shards", clips, per_shard=64, height=64, width=80)
    out = root / "collection"
    extract_features(
        Embedder.load(weights, device="cpu"), shards, out, batch_size=32, num_workers=0, dtype="float16", progress=False
    )
    merge_parts(shards, out, {"path": str(weights)})
    build_collection_index(out)
    return out


def free_port() -> int:
    from pipeline.train.distributed import free_port as free

    return free()


def start_server(repo: Path, collection: Path, port: int, options: list[str], log_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.search", "serve", str(collection), "--port", str(port), *options],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "wb"),
    )
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log_path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server did not answer within 5 minutes; see {log_path}")


def page_path(n: int) -> str:
    return f"/?q={urllib.parse.quote(QUERIES[n % len(QUERIES)])}&k=12"


def complete(status: int, body: bytes) -> bool:
    return status == 200 and body.rstrip().endswith(b"</html>")


def steady(port: int, clients: int, seconds: float, server_pid: int) -> dict:
    """Closed loop: each client sends its next request when the last one is answered. Also the server's CPU
    time per answer (user + system, all its threads), steadier than wall time on a shared machine."""
    import psutil

    server = psutil.Process(server_pid)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(c: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        n = c * 7
        start.wait()
        while time.perf_counter() < stop_at[0]:
            began = time.perf_counter()
            try:
                conn.request("GET", page_path(n))
                response = conn.getresponse()
                ok = complete(response.status, response.read())
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            latencies[c].append(time.perf_counter() - began)
            failures[c] += not ok
            n += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    cpu_before = sum(server.cpu_times()[:2])
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    cpu = sum(server.cpu_times()[:2]) - cpu_before
    every = np.array([x for per in latencies for x in per]) * 1000
    done = len(every) - sum(failures)
    return emit(
        {
            "bench": "serve",
            "clients": clients,
            "seconds": round(elapsed, 1),
            "requests": len(every),
            "failed": sum(failures),
            "queries_per_s": round(done / elapsed, 1),
            "p50_ms": round(float(np.percentile(every, 50)), 1),
            "p99_ms": round(float(np.percentile(every, 99)), 1),
            "max_ms": round(float(every.max()), 1),
            "server_cpu_ms_per_query": round(1000 * cpu / max(done, 1), 2),
        }
    )


def burst(port: int, clients: int) -> dict:
    """`clients` new connections, one request each, all released at once."""
    latencies = [0.0] * clients
    ok = [False] * clients
    start = threading.Barrier(clients)

    def client(c: int):
        start.wait()
        began = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conn.request("GET", page_path(c))
            response = conn.getresponse()
            ok[c] = complete(response.status, response.read())
            conn.close()
        except OSError:
            pass
        latencies[c] = time.perf_counter() - began

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.array(latencies)
    return emit(
        {
            "bench": "serve_burst",
            "clients": clients,
            "failed": clients - sum(ok),
            "max_s": round(float(lat.max()), 2),
            "p50_s": round(float(np.median(lat)), 3),
            "over_1s": int((lat > 1).sum()),
            "over_30s": int((lat > 30).sum()),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,10,100")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--burst", type=int, default=200, help="clients in the burst (0: skip)")
    parser.add_argument("--collection-clips", type=int, default=192)
    parser.add_argument("--collection", default=None, help="serve this collection folder instead of making one")
    parser.add_argument("--threads", type=int, default=None, help="serve --threads (default: serve's own)")
    parser.add_argument("--server-repo", default=str(REPO), help="the checkout whose server to measure")
    parser.add_argument(
        "--no-server-options",
        action="store_true",
        help="pass serve no option but the port (an older server has no --threads)",
    )
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder, removed at the end")
    args = parser.parse_args()

    from foundation.logs import setup_logging

    setup_logging()
    emit_machine(cpus=os.cpu_count(), server_repo=args.server_repo)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        collection = Path(args.collection) if args.collection else demo_like_collection(tmp, args.collection_clips)
        options = [] if args.no_server_options or args.threads is None else ["--threads", str(args.threads)]
        port = free_port()
        server = start_server(Path(args.server_repo), collection, port, options, tmp / "server.log")
        try:
            for n in range(20):  # warm-up: first forward passes, page cache
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", page_path(n))
                conn.getresponse().read()
            for clients in (int(c) for c in args.clients.split(",") if c):
                steady(port, clients, args.seconds, server.pid)
            if args.burst:
                burst(port, args.burst)
        finally:
            server.terminate()
            server.wait(60)
    emit_machine()


if __name__ == "__main__":
    main()
