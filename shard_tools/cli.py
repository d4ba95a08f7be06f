"""`make-shards`: parse argv, build the rows of one source, call shard_tools.api.make_shards.

make-shards webvid  --csv results_2M_train.csv --videos-root videos/ --out shards/webvid
make-shards cc3m    --tsv Train_GCC-training.tsv --images-root training/ --out shards/cc3m
make-shards msrvtt  --root MSRVTT/ --split test --cut jsfusion --out shards/msrvtt_test
make-shards msvd    --root MSVD/ --split test --out shards/msvd_test       (also lsmdc, didemo)
make-shards csv     --table clips.parquet --path-col file --caption-col text --out shards/mine
make-shards csv     --table panda.csv --url-col url --key-col videoID --spans-col timestamp --download --out O
make-shards verify DIR        make-shards manifest DIR
"""

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading

from foundation.logs import setup_logging
from shard_tools import __version__, didemo, lsmdc, msvd, records, sources
from shard_tools.api import RunOptions, ShardOptions, make_shards
from shard_tools.download import DownloadSpec
from shard_tools.format import MANIFEST
from shard_tools.records import LocalWriteError, OptionsMismatch
from shard_tools.verify import verify

log = logging.getLogger("make-shards")

DESCRIPTION = """Pack video and image datasets into WebDataset tar shards: K pre-sampled JPEG frames, the captions
and a json per sample, a manifest per folder (docs/SHARDS.md). Every input row ends as a sample or as a
failed row with its reason; a re-run resumes. `make-shards SOURCE --help` lists a source's options.

examples:
""" + __doc__.split("\n\n")[1]


def _common(p: argparse.ArgumentParser, kind_choice: bool = False) -> None:
    p.add_argument("--out", required=True, help="output folder for shards, stats and manifest.json")
    p.add_argument("--name", help="shard name prefix (default: the source name)")
    if kind_choice:
        kinds = ("video", "image")
        p.add_argument("--kind", choices=kinds, default="video", help="video: K frames per sample; image: 1 frame")
    p.add_argument("--frames", type=int, default=8, help="K frames per video sample (default 8)")
    p.add_argument("--short-side", type=int, default=256, help="resize frames to this short side (default 256)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100 (default 90)")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="input rows per shard (default 1000)")
    p.add_argument(
        "--max-bytes", type=int, help="start a new part file (NAME-NNNNNN-pP.tar) before a shard passes this"
    )
    max_pixels = ShardOptions.max_pixels
    p.add_argument("--max-pixels", type=int, default=max_pixels, help="fail larger frames (default 8192x4320)")
    cores = os.cpu_count() or 1
    p.add_argument("--workers", type=int, default=cores, help="decoder processes (default: all cores; 0: in-process)")
    p.add_argument("--threads", type=int, default=16, help="download threads (default 16)")
    p.add_argument("--task-index", type=int, default=0, help="this task's index in an array job (default 0)")
    p.add_argument("--num-tasks", type=int, default=1, help="tasks in the array job (default 1)")
    p.add_argument("--retry-failed", action="store_true", help="re-attempt only the rows that failed before")
    p.add_argument("--download", action="store_true", help="fetch media from the URL column")
    timeout = DownloadSpec.timeout
    p.add_argument("--download-timeout", type=float, default=timeout, help="seconds one download may take (default 60)")
    p.add_argument("--download-retries", type=int, default=3, help="retries after the first try (default 3)")
    p.add_argument("--download-backoff", type=float, default=1.0, help="first retry delay, doubling (default 1 s)")
    max_download = DownloadSpec.max_bytes
    p.add_argument("--max-download-bytes", type=int, default=max_download, help="refuse larger (default 512 MiB)")
    p.add_argument("--decode-timeout", type=float, default=120.0, help="seconds per file before its worker is killed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make-shards", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"make-shards {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SOURCE|verify|manifest")

    p = sub.add_parser("webvid", help="official WebVid CSV (videoid,contentUrl,duration,page_dir,name)")
    p.add_argument("--csv", required=True, help="e.g. results_2M_train.csv")
    p.add_argument("--videos-root", help="folder laid out as {page_dir}/{videoid}.mp4")
    _common(p)

    p = sub.add_parser("cc3m", help="CC-3M TSV (caption<TAB>url) or CSV with thumbnailUrl,caption")
    p.add_argument("--tsv", "--table", dest="table", required=True, help="the metadata table")
    p.add_argument("--images-root", help="folder of images named by unsigned CRC32 of the URL")
    _common(p)

    p = sub.add_parser("msrvtt", help="MSR-VTT from the unpacked MSRVTT.zip")
    p.add_argument("--root", required=True, help="folder holding annotation/, high-quality/, videos/")
    p.add_argument("--split", choices=("train", "test"), required=True)
    p.add_argument(
        "--cut",
        choices=tuple(sources.MSRVTT_CUTS),
        default="jsfusion",
        help="jsfusion (9k/1k-A, default), miech (7k/1k), full (official split)",
    )
    _common(p)

    benchmarks = {
        "lsmdc": ("LSMDC (structured-symlinks/, frame_tar_list.txt, videos/)", lsmdc.SPLITS),
        "msvd": ("MSVD (YouTubeClips/, youtube_mapping.txt, AllVideoDescriptions.txt)", msvd.SPLITS),
        "didemo": ("DiDeMo ({split}_data.json, videos/), one paragraph per video", didemo.SPLITS),
    }
    for name, (layout, splits) in benchmarks.items():
        p = sub.add_parser(name, help=layout)
        p.add_argument("--root", required=True, help="the data set's folder (docs/SHARDS.md)")
        p.add_argument("--split", choices=tuple(splits), required=True)
        _common(p)

    p = sub.add_parser("csv", help="any CSV/TSV/JSONL/parquet of clips or images")
    p.add_argument("--table", "--csv", dest="table", required=True)
    p.add_argument("--format", choices=("csv", "tsv", "jsonl", "parquet"), help="default: from the suffix")
    p.add_argument("--path-col", help="column with local media paths (relative to --media-root)")
    p.add_argument("--url-col", help="column with media URLs (used with --download)")
    p.add_argument("--caption-col", default="caption")
    p.add_argument("--key-col", help="column with unique ids (default: the row number)")
    p.add_argument("--media-root", help="base of relative paths (default: the table's folder)")
    p.add_argument("--start-col", help="column with a span's start (seconds or H:MM:SS.mmm); one span per row")
    p.add_argument("--end-col", help="column with a span's end; with --start-col, --key-col names the video")
    p.add_argument(
        "--spans-col", help="column listing a video's [start, end] spans, parallel to a caption list (Panda-70M)"
    )
    _common(p, kind_choice=True)

    p = sub.add_parser("verify", help="read every shard and frame of DIR, check against the manifest")
    p.add_argument("dir")
    p = sub.add_parser("manifest", help="write DIR/manifest.json after all array tasks ended")
    p.add_argument("dir")
    return parser


def _rows(args):
    if args.command == "webvid":
        return sources.webvid_rows(args.csv, args.videos_root), "video"
    if args.command == "cc3m":
        return sources.cc3m_rows(args.table, args.images_root), "image"
    if args.command == "msrvtt":
        return sources.msrvtt_rows(args.root, args.split, args.cut), "video"
    benchmark_rows = {"lsmdc": lsmdc.lsmdc_rows, "msvd": msvd.msvd_rows, "didemo": didemo.didemo_rows}
    if args.command in benchmark_rows:
        return benchmark_rows[args.command](args.root, args.split), "video"
    names = ("path_col", "url_col", "caption_col", "key_col", "media_root", "start_col", "end_col", "spans_col")
    columns = {name: getattr(args, name) for name in names}
    return sources.table_rows(args.table, kind=args.kind, fmt=args.format, **columns), args.kind


def _default_name(args) -> str:
    if args.command == "msrvtt":
        return f"msrvtt_{args.cut}_{args.split}"
    if args.command in ("lsmdc", "msvd", "didemo"):
        return f"{args.command}_{args.split}"
    return args.command


def _from_args(options_class, args: argparse.Namespace, **given):
    """An options dataclass whose fields come from the command-line values of the same name, then `given`."""
    names = {f.name for f in dataclasses.fields(options_class)} & vars(args).keys()
    return options_class(**{name: getattr(args, name) for name in names - given.keys()}, **given)


def _run_source(args) -> int:
    root = {"webvid": "videos_root", "cc3m": "images_root"}.get(args.command)
    if root and not getattr(args, root) and not args.download:
        raise SystemExit(
            f"make-shards {args.command}: give --{root.replace('_', '-')}, or --download to fetch the URLs"
        )
    rows, kind = _rows(args)
    options = _from_args(ShardOptions, args, name=args.name or _default_name(args), kind=kind)
    download = DownloadSpec(
        args.download_timeout, args.download_retries, args.download_backoff, args.max_download_bytes
    )
    run = _from_args(RunOptions, args, download_spec=download, progress=not args.no_progress)
    report = make_shards(rows, args.out, options, run)
    rate = (report.task_rows / report.seconds) if report.seconds else 0.0
    print(
        f"task {args.task_index}/{args.num_tasks}: {report.summary()}; "
        f"{report.chunks_written} shard(s) written, {report.chunks_done_before} already done, "
        f"{report.seconds:.1f} s ({rate:.2f} rows/s)"
    )
    if report.manifest:
        m = report.manifest
        print(
            f"dataset {m['name']}: "
            f"{records.summary_line(m['input_rows'], m['total_samples'], m['failed'])}; "
            f"{len(m['shards'])} shard(s); manifest {os.path.join(args.out, MANIFEST)}"
        )
        for reason, count in m["failed"].items():
            print(f"  failed {reason}: {count} (rows listed in *.stats.json)")
    else:
        print(
            f"manifest not written yet: chunks {_ranges(report.missing_chunks)} are not finished "
            f"(other array tasks); the last task writes it, or run `make-shards manifest {args.out}`"
        )
    return 0


def _ranges(numbers) -> str:
    numbers = list(numbers)
    return ", ".join(map(str, numbers[:10])) + (f" ... ({len(numbers)} in all)" if len(numbers) > 10 else "")


def _run_manifest(args) -> int:
    manifest, missing = records.finalize(args.dir)
    if manifest is None:
        print(
            f"{args.dir}: cannot write the manifest, chunks not finished: {_ranges(missing) or 'all'}; "
            f"re-run the tasks that own them (same command)",
            file=sys.stderr,
        )
        return 1
    print(
        f"{os.path.join(args.dir, MANIFEST)}: "
        f"{records.summary_line(manifest['input_rows'], manifest['total_samples'], manifest['failed'])}"
    )
    return 0


def _run_verify(args) -> int:
    report = verify(args.dir, progress=True)
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    unchecked = (
        f", {len(report.unchecked_shards)} shard(s) written before checksums were recorded "
        f"(frames decoded, no checksums to compare)"
        if report.unchecked_shards
        else ""
    )
    print(
        f"verify {args.dir}: {report.shards} shards, {report.samples} samples, {report.frames} frames "
        f"decoded, {report.members_checked} members match their checksums{unchecked}: {status}"
    )
    return 0 if report.ok else 1


class Terminated(BaseException):
    """SIGTERM (e.g. scancel, a job's time limit): unwind like Ctrl-C so temp files and download
    folders are removed; finished chunks stay and the same command resumes."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not interrupt the cleanup
    raise Terminated()


def main(argv=None) -> int:
    setup_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    out = getattr(args, "out", None) or getattr(args, "dir", None)
    try:
        if args.command == "verify":
            return _run_verify(args)
        if args.command == "manifest":
            return _run_manifest(args)
        return _run_source(args)
    except (OptionsMismatch, FileNotFoundError, ValueError) as e:
        print(f"make-shards: error: {e}", file=sys.stderr)
        return 2
    except LocalWriteError as e:
        print(
            f"make-shards: error: {e}. This is a problem of the output folder's disk, not of the input: "
            f"the run stopped; finished shards are kept. Free space (or fix the quota, permissions or "
            f"file size limit), then re-run the same command to finish {out}.",
            file=sys.stderr,
        )
        return 1
    except OSError as e:  # a local failure outside the writes make_shards names itself
        print(
            f"make-shards: error: {e}. The run stopped; finished shards in {out} are kept: fix the cause "
            f"and re-run the same command.",
            file=sys.stderr,
        )
        return 1
    except (Terminated, KeyboardInterrupt) as e:
        how = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        print(
            f"make-shards: stopped by {how}; finished shards in {out} are kept, re-run the same command to finish",
            file=sys.stderr,
        )
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
