"""make-shards under faults: bad inputs, crashing/hanging decoders, HTTP faults, kill -9 and resume,
--retry-failed. Every input row must end up written or failed with its reason."""

import csv
import ctypes
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import simplejpeg

import media
from shard_tools import cli, decode
from shard_tools.api import RunOptions, ShardOptions, make_shards
from shard_tools.verify import verify
from shardcli import shards_argv

REPO = Path(__file__).resolve().parents[1]


def manifest_of(out):
    return json.loads((Path(out) / "manifest.json").read_text())


def failures_of(out):
    return {
        f["key"]: f["reason"]
        for p in sorted(Path(out).glob("*.stats.json"))
        for f in json.loads(p.read_text())["failures"]
    }


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def test_bad_input_corpus_never_crashes_and_every_row_gets_a_reason(tmp_path):
    cases = media.bad_corpus(tmp_path / "media")
    media.render_clip(tmp_path / "media" / "good.mp4", 1.0, (64, 48), 10)
    table = tmp_path / "clips.csv"
    with open(table, "wb") as f:
        f.write(b"key,file,caption,lang\n")
        for name, path in cases.items():
            f.write(f"{name},{path.name},a caption for {name},en\n".encode())
        f.write(b"missing_fields,good.mp4\n")
        f.write(b"not_utf8,good.mp4,caf\xe9 au lait \xff,fr\n")
        f.write(b"empty_caption,good.mp4,,en\n")
        f.write(b"good,good.mp4,a good clip,en\n")
        f.write(b"missing_file,nowhere.mp4,a clip that is not there,en\n")
    out = tmp_path / "out"
    columns = {"path_col": "file", "key_col": "key"}
    argv = shards_argv(
        "csv", table=table, **columns, media_root=tmp_path / "media", out=out, workers=2, samples_per_shard=5
    )
    assert cli.main(argv) == 0
    manifest = manifest_of(out)
    assert failures_of(out) == {
        "zero_byte": "empty_file",
        "truncated": "decode_error",
        "text_as_mp4": "not_a_video",
        "audio_only": "no_video_stream",
        "corrupt_image": "decode_error",
        "missing_fields": "missing_field",
        "not_utf8": "caption_not_utf8",
        "empty_caption": "empty_caption",
        "missing_file": "missing_file",
    }
    assert manifest["input_rows"] == 13 == manifest["total_samples"] + sum(manifest["failed"].values())
    assert manifest["total_samples"] == 4  # one_frame, short, huge, good
    samples = {}
    import tarfile

    for shard in manifest["shards"]:
        with tarfile.open(out / shard["path"]) as tar:
            for m in tar:
                samples[m.name] = tar.extractfile(m).read()
    assert json.loads(samples["one_frame.json"])["frame_indices"] == [0] * 8
    assert json.loads(samples["short.json"])["frame_indices"] == [0, 0, 1, 2, 2, 3, 4, 4]
    huge = json.loads(samples["huge.json"])
    assert (huge["width"], huge["height"]) == (4096, 2304)
    assert simplejpeg.decode_jpeg(samples["huge.000.jpg"]).shape == (256, 456, 3)
    assert verify(out).ok
    # the failure records say what happened and where
    stats = [f for p in out.glob("*.stats.json") for f in json.loads(p.read_text())["failures"]]
    by_key = {f["key"]: f for f in stats}
    assert "clips.csv line 11" in by_key["not_utf8"]["detail"] and "caf" in by_key["not_utf8"]["detail"]
    assert "lang" not in by_key["missing_fields"]["detail"] and "caption" in by_key["missing_fields"]["detail"]
    assert "truncated" in by_key["truncated"]["detail"]

    out2 = tmp_path / "out2"
    argv[argv.index(str(out))] = str(out2)
    assert cli.main(argv + ["--max-pixels", "1000000", "--workers", "0"]) == 0
    assert failures_of(out2)["huge"] == "too_many_pixels"


def crashing_decoder(path, kind, spec):
    """Segfaults on '*crash*', hangs on '*hang*', else decodes normally (runs in a worker process)."""
    if "crash" in Path(path).name:
        ctypes.string_at(0)
    if "hang" in Path(path).name:
        time.sleep(600)
    return decode.decode_sample(path, kind, spec)


def test_a_segfault_or_hang_in_the_decoder_costs_one_sample(tmp_path):
    clips = [
        media.render_clip(tmp_path / f"{name}.mp4", 0.5, (64, 48), 10) for name in ("a", "crash", "b", "hang", "c")
    ]
    rows = [{"key": p.stem, "path": str(p), "caption": f"clip {p.stem}"} for p in clips]
    report = make_shards(
        rows,
        tmp_path / "out",
        ShardOptions(name="t", samples_per_shard=10),
        RunOptions(workers=2, decoder=crashing_decoder, decode_timeout=4, progress=False),
    )
    assert failures_of(tmp_path / "out") == {"crash": "worker_crash", "hang": "decode_timeout"}
    assert report.written == 3 and report.manifest["total_samples"] == 3
    detail = [f["detail"] for f in json.loads((tmp_path / "out" / "t-000000.stats.json").read_text())["failures"]]
    assert "killed by signal 11" in detail[0]


class _Faults(http.server.BaseHTTPRequestHandler):
    clip = b""
    hits: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.strip("/")
        self.hits[name] = self.hits.get(name, 0) + 1
        if name == "ok.mp4":
            self._send(200, self.clip, "video/mp4")
        elif name == "flaky.mp4" and self.hits[name] <= 2:
            self._send(503, b"busy", "text/plain")
        elif name == "flaky.mp4":
            self._send(200, self.clip, "video/mp4")
        elif name == "slow.mp4":
            time.sleep(1.5)
            self._send(200, self.clip, "video/mp4")
        elif name == "big.mp4":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(10**10))
            self.end_headers()
        elif name == "stream.mp4":  # no Content-Length, more bytes than the cap
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"\0" * 4096)
        elif name == "page.mp4":
            self._send(200, b"<html>removed</html>", "text/html; charset=utf-8")
        elif name == "junk.mp4":
            self._send(200, b"\x00\x01junk" * 100, "application/octet-stream")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the client hangs up on purpose (size cap, timeout): not an error here


def serve_on_loopback(handler):
    """Serve `handler` on 127.0.0.1 (a free port) in a thread; yields the base URL, then shuts down."""
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(tmp_path):
    _Faults.clip = media.render_clip(tmp_path / "served.mp4", 1.0, (64, 48), 10).read_bytes()
    _Faults.hits = {}
    yield from serve_on_loopback(_Faults)


def test_downloads_with_injected_http_faults(tmp_path, server):
    names = ["ok", "flaky", "missing", "slow", "big", "stream", "page", "junk"]
    table = tmp_path / "urls.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "url", "caption"])
        for n in names:
            w.writerow([n, f"{server}/{n}.mp4", f"clip {n}"])
        w.writerow(["ftp", "ftp://127.0.0.1/x.mp4", "not http"])
    out = tmp_path / "out"
    download = {"download_timeout": 0.5, "download_retries": 2, "download_backoff": 0.01, "max_download_bytes": 100000}
    argv = shards_argv(
        "csv", "--download", table=table, url_col="url", key_col="id", **download, threads=4, workers=1, out=out
    )
    assert cli.main(argv) == 0
    assert failures_of(out) == {
        "missing": "http_404",
        "slow": "timeout",
        "big": "too_large",
        "stream": "too_large",
        "page": "not_a_video",
        "junk": "not_a_video",
        "ftp": "bad_url",
    }
    assert _Faults.hits["flaky.mp4"] == 3 and _Faults.hits["missing.mp4"] == 1  # 404 is not retried
    assert _Faults.hits["slow.mp4"] == 3  # 1 try + 2 retries
    manifest = manifest_of(out)
    assert manifest["total_samples"] == 2 and manifest["input_rows"] == 9
    assert verify(out).ok
    assert not list(out.glob(".downloads-*"))  # scratch space is cleaned up


def _make_clips(root: Path, n: int) -> Path:
    for i in range(n):
        media.render_clip(root / "videos" / "p" / f"{i}.mp4", 1.0 + (i % 3) * 0.5, (64, 48), 10, gop=5)
    table = root / "results.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        for i in range(n):
            w.writerow([i, "", "PT1S", "p", f"clip {i}"])
    return table


def _cmd(table, root, out):
    argv = shards_argv("webvid", csv=table, videos_root=root / "videos", out=out, samples_per_shard=2, workers=1)
    return [sys.executable, "-m", "shard_tools.cli", *argv]


def test_kill_9_then_rerun_gives_exactly_the_complete_set(tmp_path):
    table = _make_clips(tmp_path, 24)  # 12 shards of 2: the kill lands while most are still to come
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    reference = tmp_path / "reference"
    subprocess.run(_cmd(table, tmp_path, reference), env=env, check=True, capture_output=True, cwd=REPO)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(table, tmp_path, out), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob("*.stats.json")):
        time.sleep(0.005)
    # at once: a further wait let a fast machine finish every shard before the kill (seen in CI)
    os.kill(proc.pid, signal.SIGKILL)  # the parent dies mid-run; its worker exits on the closed pipe
    proc.wait()
    finished = len(list(out.glob("*.stats.json")))
    assert 1 <= finished < 12, "the kill must land mid-run"
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run(_cmd(table, tmp_path, out), env=env, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{finished} already done" in rerun.stdout
    assert folder_bytes(out) == folder_bytes(reference)  # no temp, no duplicate, no missing sample
    assert verify(out).ok


class CountingDecoder:
    def __init__(self):
        self.paths = []

    def __call__(self, path, kind, spec):
        self.paths.append(Path(path).name)
        return decode.decode_sample(path, kind, spec)


def test_retry_failed_redoes_only_failed_rows_and_matches_a_clean_run(tmp_path):
    table = _make_clips(tmp_path, 5)
    late = tmp_path / "videos" / "p" / "3.mp4"
    hidden = late.with_suffix(".later")
    late.rename(hidden)

    def rows():
        return __import__("shard_tools.sources", fromlist=["x"]).webvid_rows(table, tmp_path / "videos")

    options = ShardOptions(name="webvid", samples_per_shard=2)
    out = tmp_path / "out"
    first = make_shards(rows(), out, options, RunOptions(progress=False))
    assert first.manifest["failed"] == {"missing_file": 1}

    hidden.rename(late)
    plain = CountingDecoder()
    make_shards(rows(), out, options, RunOptions(progress=False, decoder=plain))
    assert plain.paths == [] and manifest_of(out)["failed"] == {"missing_file": 1}  # done is done

    retry = CountingDecoder()
    report = make_shards(rows(), out, options, RunOptions(progress=False, decoder=retry, retry_failed=True))
    assert retry.paths == ["3.mp4"]
    assert report.manifest["failed"] == {} and report.manifest["total_samples"] == 5
    clean = tmp_path / "clean"
    make_shards(rows(), clean, options, RunOptions(progress=False))
    assert folder_bytes(out) == folder_bytes(clean)


def test_stale_temps_of_a_killed_run_are_removed_stats_record_included(tmp_path):
    """A kill can land after a chunk's tar is renamed and before its stats record is: the re-run redoes
    the chunk and must remove that record's temp too (the kill test hits this only now and then)."""
    from shard_tools.api import _remove_stale_temps

    stale = [
        tmp_path / ".webvid-000003.tar.ab12.tmp",
        tmp_path / ".webvid-000003-p1.tar.cd34.tmp",
        tmp_path / ".webvid-000003.stats.json.ef56.tmp",
    ]
    other = tmp_path / ".webvid-000004.stats.json.gh78.tmp"  # another task's chunk: left alone
    for path in stale + [other]:
        path.write_bytes(b"partial")
    _remove_stale_temps(tmp_path, "webvid", [3])
    assert not any(p.exists() for p in stale) and other.exists()
