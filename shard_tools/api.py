"""make_shards: the library entry point behind the `make-shards` command (no argv, no environment).

    from shard_tools.api import ShardOptions, RunOptions, make_shards
    report = make_shards(rows, "out/webvid", ShardOptions(name="webvid"), RunOptions(workers=4))

`rows` is an iterable of `shard_tools.rows.Row` or of plain dicts (`key`, `path` or `url`, `caption` or
`captions`, optional `kind`, `id`, `extra`, `span`, `video_key`). Row i belongs to chunk i // samples_per_shard;
task I of N handles the chunks c with c % N == I, so array tasks write disjoint parts of the same dataset.
Rows with a span (clips cut from a longer video) that name the same media are one decode task: the video
is fetched once, opened once and decoded forward once for all of this task's spans of it.
"""

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from shard_tools import records
from shard_tools.decode import Decoded, FrameSpec, SampleError, decode_sample, decode_spans
from shard_tools.download import DownloadSpec, fetch
from shard_tools.format import FORMAT, MANIFEST
from shard_tools.records import LocalWriteError
from shard_tools.rows import Row, finish_rows, input_fingerprint, row_from_record
from shard_tools.workers import DecodePool
from shard_tools.writer import ChunkWriter, read_samples, sample_members

log = logging.getLogger("shard_tools")


@dataclass
class ShardOptions:
    """Everything that decides the shards' bytes (recorded in every stats file and the manifest)."""

    name: str
    kind: str = "video"  # dataset kind; an image dataset stores 1 frame per sample
    frames: int = 8
    short_side: int = 256
    quality: int = 90
    samples_per_shard: int = 1000
    max_bytes: int | None = None
    max_pixels: int = FrameSpec.max_pixels

    def validate(self) -> None:
        if self.kind not in ("video", "image"):
            raise ValueError(f"kind {self.kind!r}: use video or image")
        if not self.name or "." in self.name or "/" in self.name:
            raise ValueError(f"name {self.name!r}: give a non-empty name without dots or slashes")
        for field_name in ("frames", "short_side", "samples_per_shard", "max_pixels"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{field_name} must be >= 1, got {getattr(self, field_name)}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")

    def frame_spec(self, kind: str) -> FrameSpec:
        return FrameSpec(
            frames=self.frames if kind == "video" else 1,
            short_side=self.short_side,
            quality=self.quality,
            max_pixels=self.max_pixels,
        )


@dataclass
class RunOptions:
    """How to run (does not change the output)."""

    workers: int = 0  # decoder processes; 0 decodes in this process (no crash isolation)
    threads: int = 16  # download threads
    task_index: int = 0
    num_tasks: int = 1
    retry_failed: bool = False
    download: bool = False  # fetch rows' URLs (else read rows' paths)
    download_spec: DownloadSpec = field(default_factory=DownloadSpec)
    decode_timeout: float = 120.0
    progress: bool = True
    decoder: object = decode_sample  # (path, kind, FrameSpec) -> Decoded; tests inject crashing ones
    span_decoder: object = decode_spans  # (path, spans, FrameSpec) -> [Decoded | (reason, detail)] per span


@dataclass
class RunReport:
    input_rows: int = 0  # whole dataset
    task_rows: int = 0  # rows of this task's chunks
    chunks_done_before: int = 0
    chunks_written: int = 0
    written: int = 0  # samples in this task's chunks (incl. ones kept from before)
    failed: Counter = field(default_factory=Counter)
    manifest: dict | None = None
    missing_chunks: list = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return records.summary_line(self.task_rows, self.written, dict(self.failed))


def make_shards(rows, out_dir, options: ShardOptions, run: RunOptions | None = None) -> RunReport:
    run = run or RunOptions()
    options.validate()
    if not 0 <= run.task_index < run.num_tasks:
        raise ValueError(f"task index {run.task_index} is outside 0..{run.num_tasks - 1}")
    out_dir = Path(out_dir)
    with _writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    # every row is read (and fingerprinted) before anything is written: a table that cannot be read, or
    # that differs from the one this folder was made from, is refused before any work
    per = options.samples_per_shard
    mine: dict[int, list[tuple[int, Row]]] = {}
    chunk_hashes: list = []
    total = 0
    for index, row in enumerate(finish_rows(_as_rows(rows, options.kind))):
        total = index + 1
        chunk = index // per
        if chunk == len(chunk_hashes):
            chunk_hashes.append(hashlib.sha256())
        chunk_hashes[chunk].update(input_fingerprint(row))
        if chunk % run.num_tasks == run.task_index:
            mine.setdefault(chunk, []).append((index, row))
    if total == 0:
        raise ValueError(f"no input rows: the source is empty, nothing to write to {out_dir}")
    inputs = _Inputs(total, [h.hexdigest() for h in chunk_hashes])
    records.check_input(out_dir, options.name, inputs.rows, inputs.sha256, inputs.chunk_sha256)
    report = RunReport(input_rows=total)
    fingerprint = asdict(options)

    plan = _plan(out_dir, options, fingerprint, mine, run, report)
    with _writing(out_dir):
        if plan:
            (out_dir / MANIFEST).unlink(missing_ok=True)  # the folder is about to change
        _remove_stale_temps(out_dir, options.name, [c for c, _, _ in plan])
        _remove_stale_downloads(out_dir, run.task_index)
    _execute(plan, out_dir, options, run, report, fingerprint, inputs)

    with _writing(out_dir / MANIFEST):
        report.manifest, report.missing_chunks = records.finalize(out_dir, options.name)
    report.seconds = time.monotonic() - started
    return report


@dataclass
class _Inputs:
    """The input rows as a whole: their count and fingerprints (whole input, and per chunk)."""

    rows: int
    chunk_sha256: list

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.rows}\n{chr(10).join(self.chunk_sha256)}".encode()).hexdigest()

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_sha256)


def _as_rows(rows, kind: str):
    """Rows as Row objects; a record that cannot be read (even one whose iteration step or conversion
    raises) becomes a failed row at its place."""
    for index, record in enumerate(rows):
        if isinstance(record, Row):
            yield record
            continue
        try:
            yield row_from_record(record, index, kind)
        except Exception as e:  # a hostile record costs its row, not the run
            yield Row(
                key=f"{index:09d}",
                captions=[],
                kind=kind,
                where=f"record {index}",
                error=("bad_row", f"record {index}: {type(e).__name__}: {e}"),
            )


@contextlib.contextmanager
def _writing(path, writer=None):
    """An OSError while writing the output folder is the local system's, not a row's: LocalWriteError,
    naming the file (the part being written when the error carries no file name)."""
    try:
        yield
    except OSError as e:
        parts = getattr(writer, "parts", None)
        where = e.filename or (getattr(parts[-1], "tmp", None) if parts else None) or path
        raise LocalWriteError(where, e) from None


def _plan(out_dir, options, fingerprint, mine, run, report):
    """[(chunk, rows to process, kept samples)] for this task; counts finished chunks into `report`."""
    plan = []
    for chunk, rows in sorted(mine.items()):
        report.task_rows += len(rows)
        record = records.read_stats(out_dir, options.name, chunk)
        if record is not None:
            records.check_options(record, fingerprint, out_dir / records.stats_name(options.name, chunk))
        if record is None or not records.chunk_is_complete(out_dir, record):
            plan.append((chunk, rows, {}))
            continue
        failed_rows = {f["row"] for f in record["failures"]}
        if run.retry_failed and failed_rows:
            kept = {}
            written = dict(map(tuple, record["samples"]))
            for shard in record["shards"]:
                for key, members in read_samples(out_dir / shard["path"]).items():
                    kept[key] = members
            kept = {row: kept[key] for row, key in written.items()}
            plan.append((chunk, rows, kept))
            continue
        report.chunks_done_before += 1
        report.written += len(record["samples"])
        report.failed.update(f["reason"] for f in record["failures"])
    return plan


def _chunk_files(out_dir: Path, name: str, chunk: int, temp_prefix: str):
    """The chunk's tar parts (temp_prefix "") or their temp files (temp_prefix "."), the temp of its
    stats record included (a kill can land between the tar's rename and the record's)."""
    base = f"{temp_prefix}{name}-{chunk:06d}"
    suffix = ".*.tmp" if temp_prefix else ""
    patterns = [f"{base}.tar{suffix}", f"{base}-p[0-9]*.tar{suffix}"]
    if temp_prefix:
        patterns.append(f"{temp_prefix}{records.stats_name(name, chunk)}{suffix}")
    for pattern in patterns:
        yield from out_dir.glob(pattern)


def _remove_stale_temps(out_dir: Path, name: str, chunks) -> None:
    """Temp files of our own chunks left by a killed run (other array tasks' temps are not touched)."""
    for chunk in chunks:
        for tmp in _chunk_files(out_dir, name, chunk, "."):
            tmp.unlink(missing_ok=True)


def _downloads_prefix(task_index: int) -> str:
    return f".downloads-task{task_index}-"


def _remove_stale_downloads(out_dir: Path, task_index: int) -> None:
    """Download scratch folders of this task index left by a killed run (kill -9 skips all cleanup)."""
    for folder in out_dir.glob(_downloads_prefix(task_index) + "*"):
        shutil.rmtree(folder, ignore_errors=True)


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(total=total, unit="clip", dynamic_ncols=True, disable=not enabled, smoothing=0.1)
        self.failed = 0

    def step(self, ok: bool) -> None:
        if not ok:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _spans(members) -> list | None:
    """The spans a decode task cuts from its video, or None for a whole-file task."""
    return [row.span for _, _, row in members] if members[0][2].span is not None else None


def _execute(plan, out_dir, options, run, report, fingerprint, inputs):
    tasks = deque()  # decode tasks: [(chunk, index, row)], one row or every span row of one source video
    by_media: dict = {}  # (path, url) -> the decode task gathering that video's spans
    writers: dict[int, ChunkWriter] = {}
    try:
        for chunk, rows, kept in plan:
            writer = ChunkWriter(out_dir, options.name, chunk, [i for i, _ in rows], options.max_bytes)
            writers[chunk] = writer
            for index, row in rows:
                if index in kept:
                    with _writing(out_dir, writer):
                        writer.add_sample(index, row.key, kept[index])
                elif row.span is not None and row.error is None:
                    media = (row.path, row.url)
                    if media not in by_media:
                        by_media[media] = []
                        tasks.append(by_media[media])
                    by_media[media].append((chunk, index, row))
                else:
                    tasks.append([(chunk, index, row)])
            if kept:  # a retry rewrites this chunk: it is no longer complete until re-recorded
                with _writing(out_dir):
                    (out_dir / records.stats_name(options.name, chunk)).unlink(missing_ok=True)
    except BaseException:
        _abort(writers, out_dir, options.name)
        raise
    if not tasks and not writers:
        return
    stop = threading.Event()  # set when the run ends early: download threads give up at once
    progress = _Progress(sum(map(len, tasks)), run.progress)
    pool = downloads = scratch = None
    by_id = {}

    def deliver(task_id, status, payload):
        members = by_id.pop(task_id)
        spans = _spans(members)
        if status == "ok" and spans is not None:
            if not isinstance(payload, list) or len(payload) != len(spans):
                count = len(payload) if isinstance(payload, list) else type(payload).__name__
                problem = ("decode_error", f"{members[0][2].path}: {count} results for {len(spans)} spans")
                payload = [problem] * len(spans)
            for member, result in zip(members, payload):
                deliver_row(*member, *(("error", result) if isinstance(result, tuple) else ("ok", result)))
        else:
            for member in members:
                deliver_row(*member, status, payload)
        downloaded = row_tmp.pop(task_id, None)
        if downloaded:
            with _writing(downloaded):
                Path(downloaded).unlink(missing_ok=True)

    def deliver_row(chunk, index, row, status, payload):
        writer = writers[chunk]
        if status == "ok":
            try:
                if row.span is not None:  # the sample json names the video its span was cut from
                    payload = Decoded(payload.jpegs, {**payload.meta, "video_key": row.video_key})
                members = sample_members(row, index, payload)
            except Exception as e:  # an unusable decoder result costs this sample, not the run
                status, payload = (
                    "error",
                    ("decode_error", f"{row.where}: cannot store the decoded sample: {type(e).__name__}: {e}"),
                )
        with _writing(out_dir, writer):
            if status == "ok":
                writer.add_sample(index, row.key, members)
            else:
                reason, detail = payload
                writer.add_failure(
                    index,
                    {
                        "row": index,
                        "key": row.key,
                        "where": row.where,
                        "reason": reason,
                        "detail": detail,
                        "source": row.source(),
                    },
                )
        progress.step(status == "ok")
        if writer.complete:
            with _writing(out_dir, writer):
                _finish_chunk(writer, out_dir, options, fingerprint, inputs, report)
            del writers[chunk]

    row_tmp: dict = {}
    ready: deque = deque()  # (task_id, path, kind, spans)
    fetching: dict = {}  # future -> task_id
    window = max(4 * max(run.workers, 1), 8) + (run.threads if run.download else 0)
    try:
        pool = DecodePool(run.workers, run.decoder, run.decode_timeout, run.span_decoder) if run.workers > 0 else None
        if run.download:
            downloads = ThreadPoolExecutor(run.threads, thread_name_prefix="download")
            with _writing(out_dir):
                scratch = tempfile.mkdtemp(prefix=_downloads_prefix(run.task_index), dir=out_dir)
        for chunk in [c for c, w in writers.items() if w.complete]:  # chunks fully kept
            with _writing(out_dir, writers[chunk]):
                _finish_chunk(writers[chunk], out_dir, options, fingerprint, inputs, report)
            del writers[chunk]
        while tasks or ready or fetching or (pool and pool.busy()):
            while tasks and len(ready) + len(fetching) + (pool.busy() if pool else 0) < window:
                members = tasks.popleft()
                _, task_id, row = members[0]  # a task is named by its first row's index
                by_id[task_id] = members
                if row.error:
                    deliver(task_id, "error", row.error)
                elif run.download and row.url:
                    dest = os.path.join(scratch, f"{task_id:09d}")  # not the key: any key makes a file name
                    row_tmp[task_id] = dest
                    fetching[downloads.submit(fetch, row.url, dest, run.download_spec, row.kind, stop)] = task_id
                elif row.path:
                    ready.append((task_id, row.path, row.kind, _spans(members)))
                else:
                    deliver(
                        task_id,
                        "error",
                        ("missing_field", f"{row.where}: no media path (pass --download to fetch {row.url})"),
                    )
            for future in [f for f in fetching if f.done()]:
                task_id = fetching.pop(future)
                try:
                    future.result()
                    members = by_id[task_id]
                    ready.append((task_id, row_tmp[task_id], members[0][2].kind, _spans(members)))
                except SampleError as e:
                    deliver(task_id, "error", (e.reason, e.detail))
                except LocalWriteError:
                    raise
                except Exception as e:  # fetch maps every failure to a reason; this is the backstop
                    deliver(task_id, "error", ("connection_error", f"{type(e).__name__}: {e}"))
            if pool is None:
                if ready:
                    task_id, path, kind, spans = ready.popleft()
                    try:
                        if spans is None:
                            decoded = run.decoder(path, kind, options.frame_spec(kind))
                        else:
                            decoded = run.span_decoder(path, spans, options.frame_spec(kind))
                    except SampleError as e:
                        deliver(task_id, "error", (e.reason, e.detail))
                    except Exception as e:  # same contract as a worker process: one sample lost
                        deliver(task_id, "error", ("decode_error", f"{path}: {type(e).__name__}: {e}"))
                    else:
                        deliver(task_id, "ok", decoded)
                elif fetching:
                    time.sleep(0.01)
                continue
            while ready and pool.idle():
                task_id, path, kind, spans = ready.popleft()
                pool.submit(task_id, path, kind, options.frame_spec(kind), spans)
            for task_id, status, payload in pool.poll(0.05 if (pool.busy() or fetching) else 0):
                deliver(task_id, status, payload)
    except BaseException:
        stop.set()
        _abort(writers, out_dir, options.name)
        raise
    finally:
        progress.close()
        if pool:
            pool.close(wait=0 if stop.is_set() else 5.0)  # stopping: busy decoders are killed at once
        stop.set()
        if downloads:
            downloads.shutdown(wait=False, cancel_futures=True)
            wait(list(fetching), timeout=1.0)  # threads notice `stop` within a socket wait slice
        if scratch:
            _remove_folder(scratch)


def _abort(writers: dict, out_dir: Path, name: str) -> None:
    """Drop the unfinished chunks' temp files. Best effort: this runs while an error (often a full disk,
    which also fails closing the tar) is on its way up, and must not hide it."""
    for writer in writers.values():
        try:
            writer.abort()
        except Exception as e:
            log.debug("chunk %d: abort: %s", writer.chunk, e)
    with contextlib.suppress(OSError):
        _remove_stale_temps(out_dir, name, list(writers))


def _remove_folder(folder: str) -> None:
    """Remove a scratch folder; a download thread that is just ending may still add a file, so retry."""
    for _ in range(5):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            return
        time.sleep(0.1)
    log.warning("could not remove %s; the next run of this task removes it", folder)


def _finish_chunk(writer: ChunkWriter, out_dir, options, fingerprint, inputs: _Inputs, report):
    shards = writer.commit()
    failures = writer.failures
    start = writer.chunk * options.samples_per_shard
    stats = {
        "format": FORMAT,
        "name": options.name,
        "chunk": writer.chunk,
        "num_chunks": inputs.num_chunks,
        "input_rows": inputs.rows,
        "input_sha256": inputs.sha256,
        "chunk_input_sha256": inputs.chunk_sha256[writer.chunk],
        "rows": [start, min(start + options.samples_per_shard, inputs.rows)],
        "options": fingerprint,
        "shards": shards,
        "samples": [list(s) for s in writer.written],
        "failures": failures,
    }
    with _writing(out_dir / records.stats_name(options.name, writer.chunk)):
        records.write_stats(out_dir, stats)
    # a retry may need fewer parts than before: drop parts this chunk no longer lists
    listed = {s["path"] for s in shards}
    for old in _chunk_files(out_dir, options.name, writer.chunk, ""):
        if old.name not in listed:
            old.unlink()
    report.chunks_written += 1
    report.written += len(writer.written)
    report.failed.update(f["reason"] for f in failures)
    log.debug("chunk %d: %d samples, %d failed", writer.chunk, len(writer.written), len(failures))
