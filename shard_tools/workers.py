"""Supervised, long-lived decoder processes: a crash or a hang costs one sample, never the run.

Each worker owns a pipe and decodes one file at a time (a whole-file sample, or all the spans of one
source video in a single pass). The parent knows which task every worker
holds, so when a worker dies (segfault, abort, OOM kill) or exceeds the per-file timeout, exactly that
task fails (`worker_crash` / `decode_timeout`) and a fresh worker takes the slot. multiprocessing.Pool
would hang on a lost task and ProcessPoolExecutor would fail every pending task (media_stack.md 4).
Workers are started with 'spawn' because the parent runs download threads.
"""

import multiprocessing as mp
import time
from multiprocessing.connection import wait

from shard_tools.decode import SampleError


def _worker_main(conn, decoder, span_decoder) -> None:
    while True:
        try:
            task = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if task is None:
            return
        task_id, path, kind, spec, spans = task
        try:
            decoded = decoder(path, kind, spec) if spans is None else span_decoder(path, spans, spec)
            reply = (task_id, "ok", decoded)
        except SampleError as e:
            reply = (task_id, "error", (e.reason, e.detail))
        except Exception as e:  # any decoder bug still costs one sample, with its message
            reply = (task_id, "error", ("decode_error", f"{path}: {type(e).__name__}: {e}"))
        conn.send(reply)


class _Worker:
    def __init__(self, ctx, decoder, span_decoder):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, decoder, span_decoder), daemon=True)
        self.proc.start()
        child.close()
        self.task = None  # (task_id, path) while busy
        self.started = 0.0


class DecodePool:
    """`submit` a task to an idle worker, `poll` for finished ones: [(task_id, "ok"|"error", payload)].
    A task with `spans` runs span_decoder(path, spans, spec); its "ok" payload is one result per span."""

    def __init__(self, workers: int, decoder, timeout: float, span_decoder=None):
        self._ctx = mp.get_context("spawn")
        self._decoders = (decoder, span_decoder)
        self.timeout = timeout
        self._workers = [_Worker(self._ctx, *self._decoders) for _ in range(workers)]
        self.restarts = 0

    def idle(self) -> int:
        return sum(w.task is None for w in self._workers)

    def busy(self) -> int:
        return len(self._workers) - self.idle()

    def submit(self, task_id, path: str, kind: str, spec, spans=None) -> None:
        worker = next(w for w in self._workers if w.task is None)
        worker.task, worker.started = (task_id, path), time.monotonic()
        try:
            worker.conn.send((task_id, path, kind, spec, spans))
        except (BrokenPipeError, OSError):
            pass  # the worker died between tasks; poll() reports it as a crash for this task

    def poll(self, timeout: float) -> list[tuple]:
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            time.sleep(timeout)
            return []
        handles = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
        ready = set(wait(handles, timeout))
        results, now = [], time.monotonic()
        for w in busy:
            task_id, path = w.task
            if w.conn in ready:
                try:
                    reply = w.conn.recv()
                except (EOFError, OSError):
                    reply = None
                if reply is not None:
                    w.task = None
                    results.append(reply)
                    continue
            if w.proc.sentinel in ready or not w.proc.is_alive():
                w.proc.join(1)
                code = w.proc.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                results.append((task_id, "error", ("worker_crash", f"{path}: decoder process died ({how})")))
                self._replace(w)
            elif now - w.started > self.timeout:
                results.append(
                    (
                        task_id,
                        "error",
                        ("decode_timeout", f"{path}: no result after {self.timeout:g} s (--decode-timeout)"),
                    )
                )
                w.proc.kill()
                w.proc.join(5)
                self._replace(w)
        return results

    def _replace(self, worker: _Worker) -> None:
        worker.conn.close()
        self._workers[self._workers.index(worker)] = _Worker(self._ctx, *self._decoders)
        self.restarts += 1

    def close(self, wait: float = 5.0) -> None:
        """Ask every worker to exit; kill those still running after `wait` seconds in all (not per
        worker: a stopping run with 16 busy workers must not take 16 x 5 s). wait=0 kills at once."""
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + wait
        for w in self._workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(1)
            w.conn.close()
