"""Fetch one media URL to a local file: timeouts, retries with exponential backoff, a size cap, and a
clear reason for every failure (http_404, http_error, timeout, too_large, not_a_video, connection_error,
bad_url). Runs in the parent's download threads; the decoder workers then read the local file.
"""
import http.client
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from shard_tools.decode import SampleError

_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CHUNK = 1 << 16


@dataclass(frozen=True)
class DownloadSpec:
    timeout: float = 30.0         # seconds per connect/read, and 4x this for the whole transfer
    retries: int = 3              # extra attempts after the first, for retryable failures only
    backoff: float = 1.0          # seconds before the first retry; doubles each time
    max_bytes: int = 512 << 20    # refuse files larger than this (by Content-Length or while reading)
    user_agent: str = "make-shards/0.1 (+https://github.com/frozen-pipeline)"


def fetch(url: str, dest: str, spec: DownloadSpec, kind: str = "video", sleep=time.sleep) -> int:
    """Download `url` into `dest`; returns the byte count. Raises SampleError after the last attempt."""
    if not url.lower().startswith(("http://", "https://")):
        raise SampleError("bad_url", f"{url!r}: only http(s) URLs can be downloaded")
    attempt = 0
    while True:
        try:
            return _fetch_once(url, dest, spec, kind)
        except _Retryable as e:
            if attempt >= spec.retries:
                tries = f"after {attempt + 1} attempt{'s' if attempt else ''}"
                raise SampleError(e.reason, f"{url}: {e.detail} ({tries})") from None
            sleep(spec.backoff * (2 ** attempt))
            attempt += 1


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _fetch_once(url: str, dest: str, spec: DownloadSpec, kind: str) -> int:
    request = urllib.request.Request(url, headers={"User-Agent": spec.user_agent})
    deadline = time.monotonic() + 4 * spec.timeout
    try:
        with urllib.request.urlopen(request, timeout=spec.timeout) as response:
            _check_headers(url, response, spec, kind)
            total = 0
            with open(dest, "wb") as out:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > spec.max_bytes:
                        raise SampleError("too_large", f"{url}: more than {spec.max_bytes} bytes (--max-download-bytes)")
                    if time.monotonic() > deadline:
                        raise _Retryable("timeout", f"transfer took longer than {4 * spec.timeout:.0f} s")
                    out.write(chunk)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and total < int(length):
                raise _Retryable("connection_error", f"connection closed after {total} of {length} bytes")
            return total
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise SampleError("http_404", f"{url}: HTTP 404 Not Found") from None
        if e.code in _RETRYABLE_STATUS:
            raise _Retryable("http_error", f"HTTP {e.code} {e.reason}") from None
        raise SampleError("http_error", f"{url}: HTTP {e.code} {e.reason}") from None
    except (socket.timeout, TimeoutError):
        raise _Retryable("timeout", f"no response within {spec.timeout:g} s (--download-timeout)") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise _Retryable("timeout", f"no response within {spec.timeout:g} s (--download-timeout)") from None
        raise _Retryable("connection_error", str(e.reason)) from None
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        raise _Retryable("connection_error", f"{type(e).__name__}: {e}") from None


def _check_headers(url: str, response, spec: DownloadSpec, kind: str) -> None:
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > spec.max_bytes:
        raise SampleError("too_large", f"{url}: Content-Length {length} exceeds {spec.max_bytes} bytes "
                                       f"(--max-download-bytes)")
    ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype.startswith("text/") or ctype in ("application/json", "application/xhtml+xml"):
        reason = "not_a_video" if kind == "video" else "not_an_image"
        raise SampleError(reason, f"{url}: server sent {ctype}, not media")
