"""make-shards against hostile input and a hostile environment (issue 14, the make-shards side):
bad URLs, misbehaving servers, a full disk, a table that changed between runs, broken CSV/TSV/parquet.

The promise (docs/SHARDS.md): every input row is written or failed with a reason, nothing hangs, a local
failure stops the run with a clear message, and a re-run finishes the job."""

import errno
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

import media
from shard_tools import cli, download, records
from shard_tools.api import RunOptions, ShardOptions, make_shards
from shard_tools.decode import SampleError
from shard_tools.download import DownloadSpec, fetch, request_url
from shard_tools.rows import Row
from shard_tools.verify import verify
from shardcli import shards_argv
from test_shards_faults import _make_clips, _QuietServer, failures_of, folder_bytes, manifest_of, serve_on_loopback

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
CLI = [sys.executable, "-m", "shard_tools.cli"]  # make-shards in a child process, from this checkout
RUN = {"env": ENV, "cwd": REPO, "capture_output": True, "text": True}  # subprocess.run options for CLI
BEHAVE_FOR = 8.0  # seconds a misbehaving route keeps misbehaving before it gives up by itself


# --- a local server with misbehaving routes (127.0.0.1, stops by itself) ------------------------------


class _Routes(http.server.BaseHTTPRequestHandler):
    clip = b""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/").split("?")[0]
        until = time.monotonic() + BEHAVE_FOR
        try:
            if name == "ok.mp4":
                self._send(200, self.clip, "video/mp4")
            elif name == "trickle-body.mp4":  # headers at once, then a byte every 0.1 s
                self._head(200, {"Content-Type": "video/mp4", "Content-Length": "100000"})
                while time.monotonic() < until:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.1)
            elif name == "slow-headers.mp4":  # the status line, then the headers byte by byte
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for byte in b"Content-Type: video/mp4\r\nX-Padding: " + b"a" * 1000:
                    if time.monotonic() > until:
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            elif name == "endless.mp4":  # no length, fast, never ends (until BEHAVE_FOR)
                self._head(200, {"Content-Type": "video/mp4"})
                while time.monotonic() < until:
                    self.wfile.write(b"\0" * 4096)
                    time.sleep(0.002)
            elif name == "silent.mp4":  # accepts, never answers
                time.sleep(BEHAVE_FOR)
            elif name.startswith("hop"):  # a redirect chain, 0.4 s per hop, then the clip
                hop = int(name[3:].split(".")[0])
                time.sleep(0.4)
                if hop < 6:
                    self._head(302, {"Location": f"/hop{hop + 1}.mp4", "Content-Length": "0"})
                else:
                    self._send(200, self.clip, "video/mp4")
            elif name == "to-trickle.mp4":
                self._head(302, {"Location": "/trickle-body.mp4", "Content-Length": "0"})
            elif name == "to-ftp.mp4":
                self._head(302, {"Location": "ftp://127.0.0.1/x.mp4", "Content-Length": "0"})
            elif name == "big.mp4":  # a megabyte of media-typed bytes
                self._send(200, b"\0" * (1 << 20), "video/mp4")
            else:
                self._send(404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up (deadline, size cap): this route is done

    def _head(self, code, headers):
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _send(self, code, body, ctype):
        self._head(code, {"Content-Type": ctype, "Content-Length": str(len(body))})
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    _Routes.clip = media.render_clip(tmp_path / "served.mp4", 1.0, (64, 48), 10).read_bytes()
    yield from serve_on_loopback(_Routes)


def _url_table(path: Path, rows) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["id", "url", "caption"])
        for key, url in rows:
            w.writerow([key, url, f"clip {key}"])
    return path


def _download_argv(table, out, *extra):
    options = {"url_col": "url", "key_col": "id", "workers": 0, "download_retries": 0, "threads": 4}
    return shards_argv("csv", "--download", *extra, table=table, out=out, **options)


# --- 1. a bad URL is one failed row -----------------------------------------------------------------

BAD_URLS = [
    "http://[::1",
    "http://[::1/x.mp4",
    "http://",
    "https:///path",
    "http://host:abc/x.mp4",
    "http://host:99999/x.mp4",
    "http://a..b/x.mp4",
    "http://" + "a" * 70 + ".com/x.mp4",
    "ftp://127.0.0.1/x.mp4",
    "javascript:alert(1)",
    "//no-scheme/x.mp4",
    "x.mp4",
    "http:x.mp4",
    "http://exa\udcffmple.com/x.mp4",
]


def test_every_malformed_url_is_one_failed_row_and_the_run_goes_on(tmp_path, server):
    rows = [(f"bad{i}", url) for i, url in enumerate(BAD_URLS)]
    rows += [
        ("ok", f"{server}/ok.mp4"),
        ("to_ftp", f"{server}/to-ftp.mp4"),
        ("spaced", f"{server}/no such file ü.mp4"),
    ]  # encoded, requested, 404: not a crash
    out = tmp_path / "out"
    assert cli.main(_download_argv(_url_table(tmp_path / "urls.csv", rows), out)) == 0
    failed = failures_of(out)
    assert failed == {**{f"bad{i}": "bad_url" for i in range(len(BAD_URLS))}, "to_ftp": "bad_url", "spaced": "http_404"}
    manifest = manifest_of(out)
    assert manifest["total_samples"] == 1 and manifest["input_rows"] == len(rows)
    stats = json.loads((out / "csv-000000.stats.json").read_text())
    assert all(f["detail"] for f in stats["failures"])


def test_request_url_and_fetch_never_raise_anything_but_a_row_failure(tmp_path, server):
    """Fuzz: random strings as URLs, and random paths on a live server; the only outcomes allowed are a
    URL string / a download, or SampleError with a reason."""
    rng = random.Random(14)
    alphabet = "abc:/?#[]@!$&'()*+,;=%-._~ \t\n\x00\x7f\u00e9\u65e5\ud800\udcff0123456789"
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        for candidate in (text, "http://" + text, f"{server}/" + text):
            try:
                assert isinstance(request_url(candidate), str)
            except SampleError as e:
                assert e.reason == "bad_url" and e.detail
    spec = DownloadSpec(timeout=3, retries=0)
    for i in range(30):
        path = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        try:
            fetch(f"{server}/{path}", str(tmp_path / f"f{i}"), spec)
        except SampleError as e:
            assert e.reason in ("http_404", "http_error", "bad_url", "not_a_video", "connection_error"), e
    for weird in (None, 42, b"http://127.0.0.1/x"):
        with pytest.raises(SampleError, match="not text"):
            fetch(weird, str(tmp_path / "w"), spec)


def test_hostile_library_records_fail_their_row_only(tmp_path):
    """make_shards(rows) with records no source would produce: each costs its row, with a reason."""
    clip = media.render_clip(tmp_path / "a.mp4", 0.5, (64, 48), 10)
    rows = [
        {"key": "good", "path": str(clip), "caption": "fine"},
        ["not", "a", "dict"],
        None,
        {"key": "num_caption", "path": str(clip), "caption": 42},
        {"key": "list_caption", "path": str(clip), "captions": [["nested"]]},
        {"key": "bad_captions", "path": str(clip), "captions": 7},
        {"key": "bad_extra", "path": str(clip), "caption": "x", "extra": "not a dict"},
        {"key": "bad_kind", "path": str(clip), "caption": "x", "kind": "audio"},
        {"key": "str_caption", "path": str(clip), "captions": "one caption as a string"},
        {"key": "num_url", "url": 12345, "caption": "x"},
        {"key": "obj_url", "url": object(), "id": object(), "caption": "x"},  # stats stay valid JSON
        Row(key="path_obj", captions=["a pathlib.Path as the path"], path=clip, source_id=7),
        Row(key="a.b", captions=["a key with a dot would split the sample"], path=str(clip)),
    ]
    report = make_shards(
        rows,
        tmp_path / "out",
        ShardOptions(name="t", samples_per_shard=4),
        RunOptions(progress=False, download=True, download_spec=DownloadSpec(retries=0)),
    )
    assert report.written == 3  # good, str_caption, path_obj
    failed = failures_of(tmp_path / "out")
    assert failed == {
        "000000001": "bad_row",
        "000000002": "bad_row",
        "num_caption": "bad_row",
        "list_caption": "bad_row",
        "bad_captions": "bad_row",
        "bad_extra": "bad_row",
        "bad_kind": "bad_row",
        "num_url": "bad_url",
        "obj_url": "bad_url",
        "a.b": "bad_row",
    }
    assert report.manifest["input_rows"] == len(rows)


# --- 2. a wall-clock deadline per download -----------------------------------------------------------


@pytest.mark.parametrize("route", ["trickle-body", "slow-headers", "endless", "silent", "hop1", "to-trickle"])
def test_download_timeout_is_a_wall_clock_deadline_whatever_the_server_does(tmp_path, server, route):
    """Each route misbehaves for BEHAVE_FOR (8 s); a 1 s deadline must end the attempt long before.
    (Before: a trickle was read until it ended, a redirect chain had no overall limit.)"""
    spec = DownloadSpec(timeout=1.0, retries=0, max_bytes=1 << 30)
    started = time.monotonic()
    with pytest.raises(SampleError) as failure:
        fetch(f"{server}/{route}.mp4", str(tmp_path / "dest"), spec)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"{route}: the attempt took {elapsed:.1f} s with a 1 s deadline"
    assert failure.value.reason == "timeout", failure.value
    assert "--download-timeout" in failure.value.detail


def test_a_stopping_run_ends_transfers_and_connects_at_once(tmp_path, server):
    """`stop` (set on SIGTERM or a local write error) ends a transfer that would run 30 s more, and a
    TCP connect to a host that drops SYNs (a listener whose backlog is full), within a socket wait slice."""
    import socket

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    filler = socket.create_connection(blackhole.getsockname(), timeout=2)  # fills the backlog
    try:
        for url in (f"{server}/trickle-body.mp4", f"http://127.0.0.1:{blackhole.getsockname()[1]}/x.mp4"):
            stop = threading.Event()
            threading.Timer(0.5, stop.set).start()
            started = time.monotonic()
            with pytest.raises(SampleError, match="stopped"):
                fetch(url, str(tmp_path / "dest"), DownloadSpec(timeout=30, retries=3), stop=stop)
            assert time.monotonic() - started < 2.5, url
        started = time.monotonic()  # the deadline bounds a connect as well
        with pytest.raises(SampleError) as failure:
            fetch(
                f"http://127.0.0.1:{blackhole.getsockname()[1]}/x.mp4",
                str(tmp_path / "d"),
                DownloadSpec(timeout=1, retries=0),
            )
        assert failure.value.reason == "timeout" and time.monotonic() - started < 3.0
    finally:
        filler.close()
        blackhole.close()


class _TLSServer(_QuietServer):
    context = None

    def get_request(self):
        sock, addr = super().get_request()  # the handshake runs in the handler thread, on first read
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


@pytest.mark.skipif(not __import__("shutil").which("openssl"), reason="needs the openssl command for a test cert")
def test_the_deadline_holds_over_tls_too(tmp_path, monkeypatch):
    """https: the reads go through the TLS socket (its own class); a trickle there must end by the
    deadline as well, and a server that never does the handshake too."""
    import ssl

    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(tmp_path / "k.pem"),
            "-out",
            str(tmp_path / "c.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
    client_ctx.sslsocket_class = download._DeadlineSSLSocket
    monkeypatch.setattr(download, "_ssl_context", lambda: client_ctx)
    _Routes.clip = media.render_clip(tmp_path / "served.mp4", 0.5, (64, 48), 10).read_bytes()
    _TLSServer.context = server_ctx
    httpd = _TLSServer(("127.0.0.1", 0), _Routes)
    silent = __import__("socket").create_server(("127.0.0.1", 0))  # accepts (backlog), never speaks TLS
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"https://127.0.0.1:{httpd.server_address[1]}"
        assert fetch(f"{base}/ok.mp4", str(tmp_path / "ok"), DownloadSpec(timeout=5, retries=0)) == len(_Routes.clip)
        spec = DownloadSpec(timeout=1.0, retries=0)
        for url in (
            f"{base}/trickle-body.mp4",
            f"{base}/slow-headers.mp4",
            f"https://127.0.0.1:{silent.getsockname()[1]}/x.mp4",
        ):
            started = time.monotonic()
            with pytest.raises(SampleError) as failure:
                fetch(url, str(tmp_path / "dest"), spec)
            assert failure.value.reason == "timeout", failure.value
            assert time.monotonic() - started < 3.0, url
    finally:
        httpd.shutdown()
        httpd.server_close()
        silent.close()


def test_retries_each_get_the_deadline_and_a_run_over_slow_servers_ends(tmp_path, server):
    routes = ["trickle-body", "slow-headers", "hop1", "ok"]
    out = tmp_path / "out"
    table = _url_table(tmp_path / "urls.csv", [(r.replace("-", "_"), f"{server}/{r}.mp4") for r in routes])
    started = time.monotonic()
    retries = ["--download-timeout", "1", "--download-retries", "1", "--download-backoff", "0.01"]
    assert cli.main(_download_argv(table, out, *retries)) == 0
    assert time.monotonic() - started < BEHAVE_FOR  # 2 attempts of 1 s each, in parallel threads
    assert failures_of(out) == {"trickle_body": "timeout", "slow_headers": "timeout", "hop1": "timeout"}
    stats = json.loads((out / "csv-000000.stats.json").read_text())
    assert all("after 2 attempts" in f["detail"] for f in stats["failures"])
    assert not list(out.glob(".downloads-*"))


def test_sigterm_during_downloads_leaves_no_scratch_folder_and_a_rerun_finishes(tmp_path, server):
    out = tmp_path / "out"
    rows = [(f"t{i}", f"{server}/trickle-body.mp4?{i}") for i in range(3)] + [("ok", f"{server}/ok.mp4")]
    table = _url_table(tmp_path / "urls.csv", rows)
    argv = [*CLI, *_download_argv(table, out, "--download-timeout", "30")]
    proc = subprocess.Popen(argv, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.is_dir() and any(p.iterdir()) for p in out.glob(".downloads-*")):
        time.sleep(0.05)
    time.sleep(0.3)  # the trickles are in flight
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert not list(out.glob(".downloads-*")) and not list(out.glob(".*.tmp"))
    assert not list(out.glob("*.stats.json"))  # the one chunk was not finished

    rerun = subprocess.run([*CLI, *_download_argv(table, out, "--download-timeout", "1.5")], **RUN, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert manifest_of(out)["total_samples"] == 1 and manifest_of(out)["failed"] == {"timeout": 3}


def test_sigterm_with_hung_decoders_exits_at_once(tmp_path):
    """A stopping run kills busy decoder workers at once (they were given 5 s each, one after the other:
    16 hung workers held a SIGTERM'd job for 80 s, past Slurm's grace period)."""
    clips = [media.render_clip(tmp_path / f"hang{i}.mp4", 0.5, (64, 48), 10) for i in range(3)]
    script = tmp_path / "run.py"
    script.write_text(
        "import signal, sys\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
        "from shard_tools.api import RunOptions, ShardOptions, make_shards\n"
        "from test_shards_faults import crashing_decoder   # sleeps 600 s on '*hang*'\n"
        "def stop(*_):\n    raise KeyboardInterrupt\n"
        "if __name__ == '__main__':      # spawned workers import this file too\n"
        "    signal.signal(signal.SIGTERM, stop)\n"
        f"    clips = {[str(c) for c in clips]!r}\n"
        "    rows = [{'key': f'k{i}', 'path': p, 'caption': 'x'} for i, p in enumerate(clips)]\n"
        "    print('started', flush=True)\n"
        f"    make_shards(rows, {str(tmp_path / 'out')!r}, ShardOptions(name='t'),\n"
        "                RunOptions(workers=3, decoder=crashing_decoder, decode_timeout=600, progress=False))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "started"
    time.sleep(4)  # the spawned workers are up and hung
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - started < 6.0  # was 3 workers x 5 s
    assert "KeyboardInterrupt" in stderr and "freeze_support" not in stderr  # the workers had started
    assert not list((tmp_path / "out").glob(".*.tmp"))


# --- 3. the local disk fails: stop with a clear message, a re-run completes ----------------------------


def _limited(limit: int, argv: list[str]) -> list[str]:
    """make-shards ARGV in a Python whose files may not grow past `limit` bytes (RLIMIT_FSIZE, as
    `ulimit -f`): a write past it fails with EFBIG, a real local write error without a full disk."""
    return [
        sys.executable,
        "-c",
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        f"sys.argv = ['make-shards'] + {argv!r}; runpy.run_module('shard_tools.cli', run_name='__main__')",
    ]


def test_download_that_cannot_be_stored_stops_the_run_instead_of_failing_rows(tmp_path, server):
    out = tmp_path / "out"
    table = _url_table(tmp_path / "urls.csv", [("ok", f"{server}/ok.mp4"), ("big", f"{server}/big.mp4")])
    argv = _download_argv(table, out)
    limited = subprocess.run(_limited(300_000, argv), **RUN, timeout=120)
    assert limited.returncode == 1, limited.stdout + limited.stderr
    assert "File too large" in limited.stderr and str(out / ".downloads-") in limited.stderr
    assert "re-run the same command" in limited.stderr and "Traceback" not in limited.stderr
    assert not list(out.glob("*.stats.json")) and not list(out.glob(".downloads-*"))

    rerun = subprocess.run([*CLI, *argv], **RUN, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert set(failures_of(out)) == {"big"} and manifest_of(out)["total_samples"] == 1


def test_shard_that_cannot_be_written_stops_with_one_message_and_a_rerun_completes(tmp_path):
    table = _make_clips(tmp_path, 6)
    argv = shards_argv("webvid", csv=table, videos_root=tmp_path / "videos", samples_per_shard=3, workers=0)
    cmd = [*CLI, *argv]
    reference = tmp_path / "reference"
    subprocess.run(cmd + ["--out", str(reference)], env=ENV, cwd=REPO, check=True, capture_output=True)
    shard_size = (reference / "webvid-000000.tar").stat().st_size
    out = tmp_path / "out"
    limited = subprocess.run(_limited(shard_size // 2, argv + ["--out", str(out)]), **RUN, timeout=120)
    assert limited.returncode == 1, limited.stderr
    assert "Traceback" not in limited.stderr and limited.stderr.count("make-shards: error:") == 1
    assert f"cannot write {out}/.webvid-000000.tar." in limited.stderr and "File too large" in limited.stderr
    assert not list(out.glob(".*.tmp"))

    rerun = subprocess.run(cmd + ["--out", str(out)], **RUN)
    assert rerun.returncode == 0, rerun.stderr
    assert folder_bytes(out) == folder_bytes(reference)


class _FullDisk:
    """Raises ENOSPC on the n-th call of the patched write step, then behaves."""

    def __init__(self, real, fail_at: int):
        self.real, self.fail_at, self.calls = real, fail_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(*args, **kwargs)


def _write_points():
    import foundation.fsutil
    import shard_tools.api
    import shard_tools.format

    return {  # where the shard folder is written: tar members, the rename into place, stats, manifest
        "tar member": (tarfile.TarFile, "addfile"),
        "tar rename": (foundation.fsutil.os, "replace"),
        "stats record": (records, "write_stats"),
        "manifest": (shard_tools.format, "atomic_write_json"),
        "scratch folder": (shard_tools.api.tempfile, "mkdtemp"),
    }


@pytest.mark.parametrize(
    "point, fail_at",
    [
        ("tar member", 1),
        ("tar member", 25),
        ("tar rename", 1),
        ("tar rename", 3),
        ("stats record", 1),
        ("stats record", 3),
        ("manifest", 1),
        ("scratch folder", 1),
    ],
)
def test_disk_full_at_any_write_stops_cleanly_and_a_rerun_matches_a_clean_run(
    tmp_path, capsys, monkeypatch, point, fail_at
):
    """ENOSPC at the n-th call of each step that writes the folder: exit 1 with one message naming the
    folder, no temp left, a re-run completes."""
    table = _make_clips(tmp_path, 5)
    argv = shards_argv("webvid", csv=table, videos_root=tmp_path / "videos", samples_per_shard=2, workers=0)
    reference = tmp_path / "reference"
    assert cli.main(argv + ["--out", str(reference)]) == 0
    out = tmp_path / "out"
    if point == "scratch folder":
        argv += ["--download"]  # scratch space exists only for downloads (no URLs here: rows read paths)
    owner, name = _write_points()[point]
    full = _FullDisk(getattr(owner, name), fail_at)
    with monkeypatch.context() as patch:
        patch.setattr(owner, name, lambda *args, **kwargs: full(*args, **kwargs))  # binds as a method too
        capsys.readouterr()
        code = cli.main(argv + ["--out", str(out)])
    err = capsys.readouterr().err
    assert full.calls >= fail_at and code == 1, err
    assert "No space left on device" in err and str(out) in err and "re-run the same command" in err
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".downloads-*"))
    assert cli.main(argv + ["--out", str(out)]) == 0
    assert folder_bytes(out) == folder_bytes(reference)


def test_disk_full_while_downloading_is_not_a_connection_error(tmp_path, server, capsys, monkeypatch):
    out = tmp_path / "out"
    table = _url_table(tmp_path / "urls.csv", [(f"r{i}", f"{server}/ok.mp4?{i}") for i in range(4)])

    def full_open(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(download, "open", full_open, raising=False)
    assert cli.main(_download_argv(table, out)) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and ".downloads-task0-" in err
    assert not list(out.glob("*.stats.json"))  # no row was failed as connection_error
    monkeypatch.undo()
    assert cli.main(_download_argv(table, out)) == 0
    assert manifest_of(out)["total_samples"] == 4


# --- 5. a table that changed between runs ------------------------------------------------------------


def _webvid_table(path: Path, n: int, edit=None) -> Path:
    lines = ["videoid,contentUrl,duration,page_dir,name"] + [f"{i},,PT1S,p,clip {i}" for i in range(n)]
    if edit:
        lines = edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _webvid_run(tmp_path, clips: int, rows: int):
    """Clips, a WebVid table of `rows` of them, and the make-shards argv (2 per shard) into tmp_path/out."""
    _make_clips(tmp_path, clips)
    table = _webvid_table(tmp_path / "t.csv", rows)
    out = tmp_path / "out"
    argv = shards_argv("webvid", csv=table, videos_root=tmp_path / "videos", out=out, samples_per_shard=2, workers=0)
    return table, out, argv


@pytest.mark.parametrize("change", ["shorter", "longer", "caption edited", "rows swapped", "row replaced"])
def test_a_changed_table_is_refused_before_any_work(tmp_path, capsys, change):
    table, out, argv = _webvid_run(tmp_path, 8, 6)
    assert cli.main(argv) == 0
    before = folder_bytes(out)
    edits = {
        "shorter": lambda n: _webvid_table(table, 4),
        "longer": lambda n: _webvid_table(table, 8),
        "caption edited": lambda n: _webvid_table(table, 6, lambda ls: ls[:4] + ["3,,PT1S,p,another caption"] + ls[5:]),
        "rows swapped": lambda n: _webvid_table(table, 6, lambda ls: ls[:1] + [ls[2], ls[1]] + ls[3:]),
        "row replaced": lambda n: _webvid_table(table, 6, lambda ls: ls[:6] + ["7,,PT1S,p,clip 7"]),
    }
    edits[change](6)
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "input table changed" in err and "new --out" in err
    assert folder_bytes(out) == before  # nothing written, nothing deleted
    assert {
        "shorter": "made from 6 input rows, the input now has 4; chunks that differ: 2 (rows 4-5: not in",
        "longer": "made from 6 input rows, the input now has 8; rows 6-7 are new",
        "caption edited": "chunks that differ: 1 (rows 2-3: edited)",
        "rows swapped": "chunks that differ: 0 (rows 0-1: edited)",
        "row replaced": "chunks that differ: 2 (rows 4-5: edited)",
    }[change] in err
    assert cli.main(argv + ["--retry-failed"]) == 2


def test_a_folder_begun_before_fingerprints_still_resumes(tmp_path):
    """Stats records written before the input fingerprint existed carry none: the row count is checked,
    and a folder mixing them with new records still gets its manifest."""
    table, out, argv = _webvid_run(tmp_path, 6, 6)
    assert cli.main(argv) == 0
    reference = folder_bytes(out)
    for chunk in (0, 1):  # as an older version wrote them
        path = out / f"webvid-00000{chunk}.stats.json"
        record = json.loads(path.read_text())
        del record["input_sha256"], record["chunk_input_sha256"]
        path.write_text(json.dumps(record))
    for name in ("webvid-000002.stats.json", "webvid-000002.tar", "manifest.json"):  # unfinished there
        (out / name).unlink()
    assert cli.main(argv) == 0
    assert manifest_of(out)["input_sha256"] == json.loads(reference["manifest.json"])["input_sha256"]
    assert (out / "webvid-000002.tar").read_bytes() == reference["webvid-000002.tar"]
    assert cli.main(["webvid", "--csv", str(_webvid_table(tmp_path / "short.csv", 4))] + argv[3:]) == 2


def _stats_damages():
    """(name, damage(record bytes) -> bytes): cut short, and well-formed JSON of the wrong shape."""

    def edit(change):
        def damage(data):
            record = json.loads(data)
            change(record)
            return json.dumps(record).encode()

        return damage

    return [
        ("cut short", lambda data: data[:40]),
        ("a list", lambda data: b"[1, 2]"),
        ("no shards", edit(lambda r: r.pop("shards"))),
        ("chunk as text", edit(lambda r: r.update(chunk="1"))),
        ("shard entry null", edit(lambda r: r["shards"].__setitem__(0, None))),
        ("shard bytes as text", edit(lambda r: r["shards"][0].update(bytes="12"))),
        ("failures an object", edit(lambda r: r.update(failures={}))),
        ("failure without reason", edit(lambda r: r["failures"].append({"row": 1}))),
    ]


@pytest.mark.parametrize("damage", _stats_damages(), ids=[n for n, _ in _stats_damages()])
def test_a_damaged_stats_record_is_named_and_deleting_it_redoes_its_chunk(tmp_path, capsys, damage):
    table, out, argv = _webvid_run(tmp_path, 4, 4)
    assert cli.main(argv) == 0
    reference = folder_bytes(out)
    damaged = out / "webvid-000001.stats.json"
    damaged.write_bytes(damage[1](reference[damaged.name]))
    for command in (argv, ["manifest", str(out)]):  # a re-run, and rebuilding the manifest from the records
        capsys.readouterr()
        assert cli.main(command) == 2, command
        assert f"{damaged} is damaged" in capsys.readouterr().err
    damaged.unlink()
    assert cli.main(argv) == 0 and folder_bytes(out) == reference


def test_the_same_table_resumes_even_with_the_media_moved(tmp_path, capsys):
    _make_clips(tmp_path, 6)
    table = _webvid_table(tmp_path / "t.csv", 6)
    out = tmp_path / "out"
    argv = shards_argv("webvid", csv=table, out=out, samples_per_shard=2, workers=0)
    assert cli.main(argv + ["--videos-root", str(tmp_path / "videos")]) == 0
    (tmp_path / "videos").rename(tmp_path / "moved")
    capsys.readouterr()
    assert cli.main(argv + ["--videos-root", str(tmp_path / "moved")]) == 0
    assert "3 already done" in capsys.readouterr().out
    assert manifest_of(out)["input_sha256"]


# --- 6. CSV / TSV / parquet parsed strictly ----------------------------------------------------------


def _clip_table(tmp_path, text: str, name="t.csv") -> Path:
    media.render_clip(tmp_path / "a.mp4", 0.5, (64, 48), 10)
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def _csv_argv(table, out, *extra):
    return shards_argv("csv", *extra, table=table, path_col="file", key_col="key", out=out, workers=0)


@pytest.mark.parametrize(
    "body, line",
    [
        ('k1,a.mp4,fine\nk2,a.mp4,"an unclosed caption\nk3,a.mp4,swallowed\nk4,a.mp4,also swallowed\n', 3),
        ('k1,a.mp4,fine\nk2,a.mp4,"unclosed\nk3,a.mp4,"quoted"\nk4,a.mp4,x\n', 3),
        ('k1,a.mp4,"a "quoted" word"\nk2,a.mp4,fine\n', 2),
        ('k1,a.mp4,fine\nk2,a.mp4,"stray"text\n', 3),
    ],
)
def test_broken_quoting_is_refused_naming_the_line(tmp_path, capsys, body, line):
    table = _clip_table(tmp_path, "key,file,caption\n" + body)
    out = tmp_path / "out"
    assert cli.main(_csv_argv(table, out)) == 2
    err = capsys.readouterr().err
    assert f"row starting on line {line} cannot be parsed" in err and "quote" in err
    assert not list(out.glob("*.tar"))


def test_a_mutated_csv_is_either_refused_naming_the_table_or_fully_accounted_for(tmp_path, capsys):
    """Fuzz: one random byte inserted into or deleted from a valid table, 40 times. The run never
    raises: it refuses (exit 2, the table named) or every row it read is written or failed."""
    valid = b'key,file,caption\nk1,a.mp4,"a caption, with a comma"\nk2,a.mp4,plain\nk3,a.mp4,"say ""hi"""\n'
    table = _clip_table(tmp_path, valid.decode())
    rng = random.Random(6)
    outcomes = set()
    for i in range(40):
        at = rng.randrange(len(valid))
        data = (
            valid[:at] + valid[at + 1 :]
            if rng.random() < 0.3
            else valid[:at] + rng.choice([b'"', b",", b"\n", b"\t", b"\r", b"\x00", b"\xff"]) + valid[at:]
        )
        table.write_bytes(data)
        out = tmp_path / f"out{i}"
        capsys.readouterr()
        code = cli.main(_csv_argv(table, out))
        err = capsys.readouterr().err
        assert code in (0, 2), (data, err)
        outcomes.add(code)
        if code == 2:
            assert f"make-shards: error: {table}" in err, (data, err)
        else:
            manifest = manifest_of(out)
            assert manifest["input_rows"] == manifest["total_samples"] + sum(manifest["failed"].values())
    assert outcomes == {0, 2}


def test_a_quoted_caption_over_several_lines_is_one_row_with_a_warning(tmp_path, capsys):
    table = _clip_table(tmp_path, 'key,file,caption\nk1,a.mp4,"two\nlines"\nk2,a.mp4,one line\n')
    out = tmp_path / "out"
    assert cli.main(_csv_argv(table, out)) == 0
    assert manifest_of(out)["total_samples"] == 2
    assert "t.csv lines 2-3: one row" in capsys.readouterr().err


@pytest.mark.parametrize(
    "source, header, missing",
    [
        ("csv", "key,file,text", "'caption'"),
        ("csv", "key,path,caption", "'file'"),
        ("csv", "key\tfile\tcaption", "--format tsv"),
        ("csv", "key,file,caption,caption", "more than once"),
        ("webvid", "videoid,contentUrl,duration,page_dir,title", "'name'"),
        ("webvid", "id,contentUrl,duration,page_dir,name", "'videoid'"),
        ("cc3m", "caption,url", "'thumbnailUrl'"),
        ("cc3m", "text\tthumbnailUrl", "'caption'"),
    ],
)
def test_a_wrong_header_is_refused_up_front_naming_the_missing_columns(tmp_path, capsys, source, header, missing):
    sep = "\t" if "\t" in header else ","
    width = len(header.split(sep))
    body = "\n".join(sep.join(["k1", "a.mp4", "a caption", "x"][:width]) for _ in range(1)) + "\n"
    table = _clip_table(tmp_path, header + "\n" + body, "t.tsv" if source == "cc3m" and sep == "\t" else "t.csv")
    out = tmp_path / "out"
    argv = {
        "csv": _csv_argv(table, out),
        "webvid": ["webvid", "--csv", str(table), "--videos-root", str(tmp_path), "--out", str(out)],
        "cc3m": ["cc3m", "--tsv", str(table), "--images-root", str(tmp_path), "--out", str(out)],
    }[source]
    assert cli.main(argv + ["--no-progress", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert missing in err and str(table) in err
    assert not list(out.glob("*.stats.json"))


def test_wrong_columns_in_jsonl_and_parquet_are_refused(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _clip_table(tmp_path, "")
    records_ = [{"key": "k1", "file": "a.mp4", "text": "a caption"}]
    pq.write_table(pa.Table.from_pylist(records_), tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text(json.dumps(records_[0]) + "\n")
    for name in ("t.parquet", "t.jsonl"):
        assert cli.main(_csv_argv(tmp_path / name, tmp_path / f"out_{name}")) == 2
        err = capsys.readouterr().err
        assert "'caption'" in err and "--caption-col" in err
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    assert cli.main(_csv_argv(tmp_path / "broken.parquet", tmp_path / "out_b")) == 2
    assert "not a readable parquet file" in capsys.readouterr().err


def test_extra_values_fail_their_row_and_extra_columns_pass_through(tmp_path):
    """A row with more values than the header loses nothing silently (bad_row, values named); a column
    the source does not use goes to the sample json's `extra`, for WebVid and CC-3M as for csv."""
    _make_clips(tmp_path, 3)
    webvid = tmp_path / "w.csv"
    webvid.write_text(
        "videoid,contentUrl,duration,page_dir,name,category\n"
        "0,,PT1S,p,clip 0,sports\n1,,PT1S,p,a dog, running,pets\n2,,PT1S,p,clip 2,\n"
    )
    out = tmp_path / "w"
    assert cli.main(shards_argv("webvid", csv=webvid, videos_root=tmp_path / "videos", out=out, workers=0)) == 0
    assert failures_of(out) == {"1": "bad_row"}
    stats = json.loads((out / "webvid-000000.stats.json").read_text())
    assert "'pets'" in stats["failures"][0]["detail"] and "w.csv line 3" in stats["failures"][0]["detail"]
    with tarfile.open(out / "webvid-000000.tar") as tar:
        info = json.loads(tar.extractfile("0.json").read())
    assert info["extra"] == {"duration": "PT1S", "page_dir": "p", "category": "sports"}

    media.render_image(tmp_path / "img.jpg")
    url = "http://example.com/a.jpg"
    crc = __import__("shard_tools.sources", fromlist=["x"]).cc3m_image_name(url)
    (tmp_path / "img.jpg").rename(tmp_path / f"{crc}.jpg")
    tsv = tmp_path / "cc.tsv"
    tsv.write_text(f"a caption\t{url}\nwith a\ttab inside\t{url}\n")
    out = tmp_path / "cc"
    assert cli.main(shards_argv("cc3m", tsv=tsv, images_root=tmp_path, out=out, workers=0)) == 0
    assert failures_of(out) == {"000000001": "bad_row"}
    table = tmp_path / "cc.csv"
    table.write_text(f"caption,thumbnailUrl,license\na caption,{url},cc-by\n")
    out = tmp_path / "cc_csv"
    assert cli.main(shards_argv("cc3m", tsv=table, images_root=tmp_path, out=out, workers=0)) == 0
    with tarfile.open(out / "cc3m-000000.tar") as tar:
        assert json.loads(tar.extractfile("000000000.json").read())["extra"] == {"license": "cc-by"}


def test_binary_and_numeric_parquet_cells_are_read_as_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _clip_table(tmp_path, "")
    table = pa.table(
        {"key": [1, 2, 3], "file": [b"a.mp4", b"a.mp4", b"a.mp4"], "caption": [b"caf\xc3\xa9", b"caf\xe9", None]}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    out = tmp_path / "out"
    assert cli.main(_csv_argv(tmp_path / "t.parquet", out)) == 0
    assert failures_of(out) == {"2": "caption_not_utf8", "3": "missing_field"}
    with tarfile.open(out / "csv-000000.tar") as tar:
        assert json.loads(tar.extractfile("1.json").read())["captions"] == ["café"]
    assert verify(out).ok
