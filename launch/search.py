"""Text-to-video search: extract features, build the index, query it, serve the page (docs/SEARCH.md).

    python launch/search.py extract --model RUN/weights/final --shards SHARDS --out COLL
    python launch/search.py extract --model model_best.pth.tar --media my_videos/ --out COLL
    python launch/search.py build-index COLL [--kind auto|flat|ivf|ivfpq]
    python launch/search.py query COLL "a red square moves to the left" -k 5
    python launch/search.py serve COLL [--host 127.0.0.1] [--port 8000]

`extract` runs one rank per process: alone, under torchrun/srun (ranks from the launcher), or with
`--procs N` to start N local processes (one per GPU when there are GPUs). A re-run resumes.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from foundation.logs import setup_logging
from pipeline.search import server as search_server
from pipeline.search.features import extract_features, merge_parts, wait_for_parts
from pipeline.search.index import EXACT_MAX_DEFAULT, Searcher, build_collection_index
from pipeline.search.inference import Embedder
from pipeline.search.media import shards_from_media
from pipeline.search.webapp import SearchApp
from pipeline.train import distributed
from pipeline.train.checkpoints import find_run_config

log = logging.getLogger("search")


def main(argv=None) -> int:
    args = parse_args(argv)

    setup_logging()
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as e:  # missing index/features/model, bad options: say what to do
        log.error("%s", e)
        return 2


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="embed every sample of a shard folder (or a media folder)")
    p.add_argument(
        "--model",
        required=True,
        help="weights folder (RUN/weights/final), a finished checkpoint folder "
        "(RUN/checkpoints/step_N) or the original .pth.tar; loaded without "
        "running code from it, a damaged file is named",
    )
    p.add_argument(
        "--run-config",
        help="the run's config.json for its preprocessing (default: RUN/config.json "
        "beside RUN/weights/*; else the model's sizes and loader defaults)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="a make-shards output folder (with manifest.json)")
    src.add_argument("--media", help="a folder of videos/images: shards are made into OUT/shards first")
    p.add_argument("--out", required=True, help="the collection folder to write")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="decoding processes per rank")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--procs", type=int, default=1, help="local ranks to start (one per GPU on GPU machines)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda:<local rank> if available)")
    p.add_argument("--frames", type=int, default=8, help="--media: frames stored per clip")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_extract)

    p = sub.add_parser("build-index", help="build the FAISS index of an extracted collection")
    p.add_argument("collection")
    p.add_argument(
        "--kind",
        choices=("auto", "flat", "ivf", "ivfpq"),
        default="auto",
        help="auto: exact up to --exact-max vectors, IVF above",
    )
    p.add_argument("--exact-max", type=int, default=None)
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4*sqrt(N))")
    p.add_argument("--nprobe", type=int, default=None, help="lists visited per query (default nlist/8, >= 16)")
    p.add_argument("--pq-m", type=int, default=None, help="ivfpq: sub-quantisers (default D/4)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_build_index)

    p = sub.add_parser("query", help="print the top-k items for a text query")
    p.add_argument("collection")
    p.add_argument("text", nargs="+", help="the query (several words need no quotes)")
    p.add_argument("-k", type=int, default=10)
    add_searcher_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per result")
    p.set_defaults(run=cmd_query)

    p = sub.add_parser("serve", help="serve the search page")
    p.add_argument("collection")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000)
    limits = (  # the server's limits: option, default, what it bounds
        (
            "--threads",
            search_server.DEFAULT_THREADS,
            "worker threads answering requests (slow or idle clients hold none)",
        ),
        ("--idle-timeout", search_server.DEFAULT_IDLE_TIMEOUT, "seconds before a silent connection is closed"),
        (
            "--max-connections",
            search_server.DEFAULT_MAX_CONNECTIONS,
            f"open connections at most (more wait in the kernel's queue of {search_server.BACKLOG})",
        ),
    )
    for option, default, what in limits:
        p.add_argument(option, type=int, default=default, help=f"{what}; default %(default)s")
    add_searcher_args(p)
    p.set_defaults(run=cmd_serve)
    return parser.parse_args(argv)


def add_searcher_args(p) -> None:
    """What `query` and `serve` need to embed a query against a collection."""
    p.add_argument("--model", help="default: the model the features were extracted with")
    p.add_argument("--run-config", help="default: the one the features were extracted with")
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--device", default=None)


# ---------------------------------------------------------------------------------------------- extract


def cmd_extract(args) -> int:

    out = Path(args.out)
    env = distributed.read_env()
    if args.procs > 1 and env.world_size > 1:
        raise ValueError("--procs starts local ranks itself; do not combine it with torchrun/srun")
    if args.media and env.world_size > 1:
        raise ValueError(
            "--media makes shards before extracting: run it as one process (with --procs N for "
            "local ranks), or make the shards with make-shards and pass --shards under torchrun/srun"
        )
    shards = Path(args.shards) if args.shards else shards_from_media(Path(args.media), out, args.frames)
    if args.procs > 1:
        mp.start_processes(
            _extract_rank, args=(args, shards, args.procs), nprocs=args.procs, start_method="spawn", join=True
        )
        rank, world = 0, args.procs
    else:
        rank, world = env.rank, env.world_size
        _extract(args, shards, rank, world, env.local_rank)
    if rank != 0:
        return 0
    wait_for_parts(shards, out)
    info = merge_parts(shards, out, model_info=_model_info(args))
    print(json.dumps({"collection": str(out), "count": info["count"], "skipped": info["skipped"]}))
    return 0


def _extract_rank(local_rank: int, args, shards: Path, world: int) -> None:

    setup_logging(rank=local_rank)
    _extract(args, shards, local_rank, world, local_rank)


def _extract(args, shards: Path, rank: int, world: int, local_rank: int) -> None:

    if args.device:
        device = args.device
    elif torch.cuda.is_available():
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    else:
        device = "cpu"
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
    embedder = Embedder.load(args.model, device=device, run_config=args.run_config)
    counts = extract_features(
        embedder,
        shards,
        args.out,
        rank=rank,
        world_size=world,
        batch_size=args.batch_size,
        num_workers=args.workers,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    log.info("rank %d: %s", rank, counts)


def _model_info(args) -> dict:
    """Where the features came from; `query` and `serve` load this model unless told otherwise."""

    model = Path(args.model).resolve()
    run_config = Path(args.run_config).resolve() if args.run_config else find_run_config(model)
    return {"path": str(model), "run_config": str(run_config) if run_config else None}


# ---------------------------------------------------------------------------------------------- index


def cmd_build_index(args) -> int:

    info = build_collection_index(
        args.collection,
        args.kind,
        nlist=args.nlist,
        nprobe=args.nprobe,
        pq_m=args.pq_m,
        exact_max=args.exact_max or EXACT_MAX_DEFAULT,
        seed=args.seed,
    )
    print(json.dumps(info.__dict__))
    return 0


def open_search(args):
    """(Searcher, Embedder) for a collection: the index first, so a missing one fails before model loading."""

    searcher = Searcher(args.collection, nprobe=args.nprobe)
    made_with = searcher.collection.info["model"]
    if args.model:
        return searcher, Embedder.load(args.model, device=args.device, run_config=args.run_config)
    return searcher, Embedder.load(
        made_with["path"], device=args.device, run_config=args.run_config or made_with.get("run_config")
    )


def cmd_query(args) -> int:
    searcher, embedder = open_search(args)
    query = " ".join(args.text).strip()
    if not query:
        raise ValueError("the query is empty: give some words to search for")
    hits = searcher.search(embedder.embed_texts([query])[0], args.k)
    for hit in hits:
        source = hit.item.get("source") or {}
        where = source.get("path") or source.get("url") or ""
        if args.json:
            print(
                json.dumps(
                    {
                        "rank": hit.rank,
                        "score": round(hit.score, 6),
                        "id": hit.id,
                        "key": hit.item["key"],
                        "source": where,
                        "caption": hit.item.get("caption"),
                    }
                )
            )
        else:
            print(
                f"{hit.rank:>3}  {hit.score:.4f}  id={hit.id}  {hit.item['key']}  {where}  "
                f"{json.dumps(hit.item.get('caption'))}"
            )
    return 0


def cmd_serve(args) -> int:

    for name in ("threads", "idle_timeout", "max_connections"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    searcher, embedder = open_search(args)
    server = search_server.make_server(
        SearchApp(searcher, embedder.embed_texts),
        args.host,
        args.port,
        threads=args.threads,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
    )
    host, port = server.server_address[:2]
    log.info(
        "serving %d items on http://%s:%d/ (e.g. %s) with %d worker threads; Ctrl-C stops",
        len(searcher.collection),
        host,
        port,
        search_server.search_url(host, port, "a red square moves to the left"),
        args.threads,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
