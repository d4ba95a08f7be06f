"""Fetch one media URL to a local file: a wall-clock deadline per attempt, retries with exponential
backoff, a size cap, and a clear reason for every failure (http_404, http_error, timeout, too_large,
not_a_video / not_an_image, connection_error, bad_url). Runs in the parent's download threads; the
decoder workers then read the local file.

The deadline holds whatever the server does (slow headers, a byte every second, an endless body,
redirects): every socket read of the attempt, TLS included, waits at most until the deadline, in short
slices so that a stopping run (`stop` set) is not kept waiting either. A failure to write the local file
is not the row's fault: it raises records.LocalWriteError, which stops the run.
"""

import errno
import functools
import http.client
import os
import re
import select
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from shard_tools.decode import SampleError
from shard_tools.records import LocalWriteError

_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CHUNK = 1 << 16
_SLICE = 0.25  # longest single socket wait, so a stop request is seen quickly
_UNSAFE_URL_CHARS = re.compile(r"[^\x21-\x7e]")  # controls, space, non-ASCII: percent-encoded


@dataclass(frozen=True)
class DownloadSpec:
    timeout: float = 60.0  # wall-clock seconds one attempt may take: connect, headers, body, redirects
    retries: int = 3  # extra attempts after the first, for retryable failures only
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    max_bytes: int = 512 << 20  # refuse files larger than this (by Content-Length or while reading)
    user_agent: str = "make-shards/0.1 (+https://github.com/frozen-pipeline)"


def fetch(url: str, dest: str, spec: DownloadSpec, kind: str = "video", stop: threading.Event | None = None) -> int:
    """Download `url` into `dest`; returns the byte count. Raises SampleError (the row's failure) after
    the last attempt, or LocalWriteError when `dest` cannot be written."""
    stop = stop or threading.Event()
    wire_url = request_url(url)
    attempt = 0
    while True:
        try:
            return _fetch_once(url, wire_url, dest, spec, kind, stop)
        except _Retryable as e:
            if attempt >= spec.retries or stop.is_set():
                tries = f"after {attempt + 1} attempt{'s' if attempt else ''}"
                raise SampleError(e.reason, f"{url}: {e.detail} ({tries})") from None
            stop.wait(spec.backoff * (2**attempt))
            attempt += 1
        except (SampleError, LocalWriteError):
            raise
        except _Stopped:
            raise SampleError("connection_error", f"{url}: the run stopped during the download") from None
        except Exception as e:  # anything unforeseen is still this row's failure, never the run's
            raise SampleError("connection_error", f"{url}: {type(e).__name__}: {e}") from None


def request_url(url) -> str:
    """The URL as sent: spaces, controls and non-ASCII characters of the path and query percent-encoded
    (as browsers do); SampleError('bad_url') when it cannot be requested at all."""
    if not isinstance(url, str):
        raise SampleError("bad_url", f"{url!r}: the URL is not text")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # raises ValueError for a non-numeric or out-of-range port
        host = parts.hostname
    except ValueError as e:  # e.g. 'Invalid IPv6 URL', 'Port out of range 0-65535'
        raise SampleError("bad_url", f"{url!r}: {e}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise SampleError("bad_url", f"{url!r}: only http(s) URLs can be downloaded")
    if not host:
        raise SampleError("bad_url", f"{url!r}: no host name")
    try:
        host.encode("idna")
    except UnicodeError as e:
        raise SampleError("bad_url", f"{url!r}: host name {host!r} is not valid ({e})") from None

    def encode(text: str) -> str:
        return _UNSAFE_URL_CHARS.sub(
            lambda m: urllib.parse.quote(m.group(), safe="", encoding="utf-8", errors="surrogateescape"), text
        )

    try:
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, encode(parts.path), encode(parts.query), ""))
    except UnicodeError as e:  # a lone surrogate that stands for no byte of the table
        raise SampleError("bad_url", f"{url!r}: cannot be encoded ({e})") from None


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class _Stopped(Exception):
    """The run is stopping (stop event set): give up the transfer at once."""


def _fetch_once(url: str, wire_url: str, dest: str, spec: DownloadSpec, kind: str, stop) -> int:
    deadline = time.monotonic() + spec.timeout
    timed_out = _Retryable("timeout", f"no complete response within {spec.timeout:g} s (--download-timeout)")
    request = urllib.request.Request(wire_url, headers={"User-Agent": spec.user_agent})
    try:
        with _opener(deadline, stop).open(request, timeout=spec.timeout) as response:
            _check_headers(url, response, spec, kind)
            return _save(url, response, dest, spec)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise SampleError("http_404", f"{url}: HTTP 404 Not Found") from None
        if e.code in _RETRYABLE_STATUS:
            raise _Retryable("http_error", f"HTTP {e.code} {e.reason}") from None
        raise SampleError("http_error", f"{url}: HTTP {e.code} {e.reason}") from None
    except TimeoutError:
        raise timed_out from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise timed_out from None
        if isinstance(e.reason, _Stopped):
            raise _Stopped() from None
        raise _Retryable("connection_error", str(e.reason)) from None
    except http.client.InvalidURL as e:
        raise SampleError("bad_url", f"{url}: {e}") from None
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        raise _Retryable("connection_error", f"{type(e).__name__}: {e}") from None


def _save(url: str, response, dest: str, spec: DownloadSpec) -> int:
    """Copy the body into `dest`. Unbuffered, so every local write error surfaces at its write call and
    is told apart from network errors (those come from response.read)."""
    try:
        out = open(dest, "wb", buffering=0)
    except OSError as e:
        raise LocalWriteError(dest, e) from None
    with out:
        total = 0
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > spec.max_bytes:
                raise SampleError("too_large", f"{url}: more than {spec.max_bytes} bytes (--max-download-bytes)")
            view = memoryview(chunk)
            try:
                while view:
                    view = view[out.write(view) :]
            except OSError as e:
                raise LocalWriteError(dest, e) from None
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and total < int(length):
        raise _Retryable("connection_error", f"connection closed after {total} of {length} bytes")
    return total


def _check_headers(url: str, response, spec: DownloadSpec, kind: str) -> None:
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > spec.max_bytes:
        raise SampleError(
            "too_large", f"{url}: Content-Length {length} exceeds {spec.max_bytes} bytes (--max-download-bytes)"
        )
    ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype.startswith("text/") or ctype in ("application/json", "application/xhtml+xml"):
        reason = "not_a_video" if kind == "video" else "not_an_image"
        raise SampleError(reason, f"{url}: server sent {ctype}, not media")


# --- sockets that keep the attempt's deadline ---------------------------------------------------------


def _bounded(sock, op, *args):
    """Run one blocking read, waiting at most until the deadline, in slices that notice `stop`."""
    while True:
        if sock.stop is not None and sock.stop.is_set():
            raise _Stopped()
        remaining = sock.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("download deadline passed")
        sock.settimeout(min(remaining, _SLICE))
        try:
            return op(*args)
        except TimeoutError:
            continue


class _DeadlineReads:
    """Reads that wait in slices up to the socket's deadline; mixed into the plain and the TLS socket class."""

    deadline = float("inf")
    stop = None

    def recv_into(self, *args):
        return _bounded(self, super().recv_into, *args)

    def recv(self, *args):
        return _bounded(self, super().recv, *args)


class _DeadlineSocket(_DeadlineReads, socket.socket):
    pass


class _DeadlineSSLSocket(_DeadlineReads, ssl.SSLSocket):
    pass


def _connect(address, timeout=None, source_address=None, *, deadline, stop):
    """socket.create_connection, but the TCP connect waits in slices too (a host that drops SYNs must
    not hold a stopping run for the whole deadline). Tries each address of the host in turn."""
    host, port = address
    last_error = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = _DeadlineSocket(family, kind, proto)
        try:
            if source_address:
                sock.bind(source_address)
            sock.setblocking(False)
            code = sock.connect_ex(sockaddr)
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            while code in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN):
                if stop is not None and stop.is_set():
                    raise _Stopped()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("download deadline passed while connecting")
                if poller.poll(int(min(remaining, _SLICE) * 1000) + 1):
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code not in (0, errno.EISCONN):
                raise OSError(code, os.strerror(code))
            sock.deadline, sock.stop = deadline, stop
            sock.settimeout(max(deadline - time.monotonic(), 0.001))  # bounds the TLS handshake as a whole
            return sock
        except (OSError, _Stopped) as e:
            sock.close()
            if isinstance(e, (TimeoutError, _Stopped)):
                raise
            last_error = e
    raise last_error or OSError(f"no address found for {host}")


class _DeadlineConnection:
    """Mixin for http.client connections: the socket (and its TLS wrapper) keeps the deadline."""

    def __init__(self, *args, deadline, stop, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_connect, deadline=deadline, stop=stop)
        self._deadline, self._stop = deadline, stop

    def connect(self):
        super().connect()
        self.sock.deadline, self.sock.stop = self._deadline, self._stop


class _HTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline, stop):
        super().__init__()
        self._connection = functools.partial(_HTTPConnection, deadline=deadline, stop=stop)

    def http_open(self, req):
        return self.do_open(self._connection, req)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One shared context (loading the system's CA certificates takes ~0.1 s), made on the first https
    URL; contexts are safe to share between threads."""
    context = ssl.create_default_context()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline, stop):
        super().__init__()
        self._connection = functools.partial(_HTTPSConnection, deadline=deadline, stop=stop)

    def https_open(self, req):
        return self.do_open(self._connection, req, context=_ssl_context())


class _Redirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise SampleError("bad_url", f"{req.full_url}: redirected to {newurl!r}, not an http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(deadline: float, stop) -> urllib.request.OpenerDirector:
    """http(s) only (no ftp, file or data), every connection bound to `deadline`; proxies as urllib."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        _HTTPHandler(deadline, stop),
        _HTTPSHandler(deadline, stop),
        urllib.request.HTTPDefaultErrorHandler(),
        _Redirects(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener
