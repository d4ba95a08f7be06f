"""A local search page over a collection: text box -> ranked thumbnails -> a clip's stored frames.

Pages are rendered on the server and hold no script at all; every piece of text that comes from a user or
a dataset (query, captions, keys, paths, urls) goes through `html.escape`, and the Content-Security-Policy
forbids scripts anyway, so a caption such as `<script>...</script>` shows as text. Source urls are shown as
text, never as links (a dataset row could say `javascript:`). Binds 127.0.0.1 unless told otherwise.

Routes: `/` (search form; `?q=...&k=...` adds results), `/item/<id>` (all stored frames of one item),
`/frame/<id>/<i>` (one stored JPEG frame, read from the shard by byte range), `/api/search?q=...&k=...`
(the same results as JSON), `/style.css`. GET and HEAD only.

`pipeline.search.server` serves it (waitress). The text encoder runs on a thread of its own
(`QueryEncoder`): its forward pass never runs on two threads at once, and queries that arrive together are
embedded as one batch.

Numbers in addresses (item ids, frame numbers, k) are ASCII digits only: `str.isdigit` accepts '²' (which
`int` then refuses) and `int` accepts '٣', so neither decides what a number is here.
"""

from __future__ import annotations

import html
import json
import logging
import queue
import re
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Callable
from urllib.parse import parse_qs, quote

import numpy as np

log = logging.getLogger(__name__)
# waitress warns "Task queue depth is N" whenever requests wait for a worker; under load that is the design
# (the figures in docs/bench/search.md include the wait), not something to log a line per request for
logging.getLogger("waitress.queue").setLevel(logging.ERROR)

DEFAULT_K = 12
MAX_K = 100
MAX_QUERY_CHARS = 500
MAX_PARAMS = 50  # query-string fields; more is not a request this page makes
NUMBER = re.compile(r"[0-9]{1,9}")  # ids, frame numbers, k: ASCII digits, bounded length
FRAME_NAME = re.compile(r"([0-9]{1,9})(?:\.jpg)?")  # /frame/<id>/<i> or /frame/<id>/<i>.jpg

MAX_BATCH = 32  # queries embedded in one forward pass

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# `main { overflow-wrap: anywhere }`: source paths, urls, keys and captions often have no space to break at;
# without it they ran out of their cards over the neighbours. `min-width: 0` lets a grid cell be narrower
# than its longest word.
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 70rem; padding: 0 1rem; color: #222; }
main { overflow-wrap: anywhere; }
header form { display: flex; gap: .5rem; margin-bottom: 1rem; }
input[type=search] { flex: 1; min-width: 0; font-size: 1.1rem; padding: .4rem .6rem; }
button { font-size: 1.1rem; padding: .4rem 1rem; }
.error { background: #fde8e8; border: 1px solid #e0a0a0; padding: .6rem .8rem; }
.meta { color: #666; font-size: .9rem; }
ol.results { list-style: none; padding: 0; display: grid; gap: 1rem;
             grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr)); }
ol.results li { border: 1px solid #ddd; border-radius: 6px; padding: .5rem; min-width: 0; }
ol.results img { width: 100%; height: 9rem; object-fit: cover; background: #eee; }
.caption { margin: .3rem 0; }
.frames { display: flex; flex-wrap: wrap; gap: .5rem; }
.frames figure { margin: 0; }
.frames img { width: 14rem; max-width: 100%; image-rendering: auto; }
.back { display: inline-block; margin-bottom: .5rem; }
"""


def escape(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def shown(text: str, limit: int = 60) -> str:
    """`text` as an error message quotes it: hostile input can be 100 kB long."""
    return text if len(text) <= limit else text[:limit] + "\u2026"


# ---------------------------------------------------------------------------------------------- encoder


@dataclass
class _Job:
    text: str
    done: threading.Event = field(default_factory=threading.Event)
    vector: np.ndarray | None = None
    error: BaseException | None = None


class QueryEncoder:
    """Embeds queries on one thread of its own, a batch of whatever queries are waiting at a time.

    `embed_texts` (e.g. `Embedder.embed_texts`) takes a list of queries and returns one vector per query.
    One thread owning the model means its forward pass never runs on two threads at once, which not every
    torch setting (device, backend, thread pool) is safe for; batching means that under load a batch of 32
    short queries costs about 3 single forward passes, not 32 (docs/bench/search.md).
    """

    def __init__(self, embed_texts: Callable[[list[str]], np.ndarray], max_batch: int = MAX_BATCH):
        self.embed_texts, self.max_batch = embed_texts, max_batch
        self._waiting: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="query-encoder", daemon=True)
        self._thread.start()

    def embed(self, text: str) -> np.ndarray:
        if self._closed:
            raise RuntimeError("the query encoder is closed")
        job = _Job(text)
        self._waiting.put(job)
        job.done.wait()
        if job.error is not None:
            raise RuntimeError(f"embedding the query failed: {job.error!r}") from job.error
        return job.vector

    def close(self) -> None:
        """Finish the queries already waiting, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._waiting.put(None)
            self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._waiting.get()]
            while batch[-1] is not None and len(batch) < self.max_batch:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is None:
                stop = True
                batch.pop()
            if batch:
                self._embed(batch)

    def _embed(self, batch: list[_Job]) -> None:
        try:
            vectors = self.embed_texts([job.text for job in batch])
            if len(vectors) != len(batch):
                raise ValueError(f"{len(batch)} queries gave {len(vectors)} vectors")
            for job, vector in zip(batch, vectors):
                job.vector = vector
        except Exception as e:  # every waiting request gets the error (and answers 500); the thread goes on
            for job in batch:
                job.error = e
        finally:
            for job in batch:
                job.done.set()


# ---------------------------------------------------------------------------------------------- the app


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str
    headers: dict = field(default_factory=dict)


def html_response(status: HTTPStatus, page: str) -> Response:
    return Response(status, page.encode("utf-8"), "text/html; charset=utf-8")


def json_response(status: HTTPStatus, obj) -> Response:
    return Response(status, json.dumps(obj).encode("utf-8"), "application/json")


class SearchApp:
    """The search site as a WSGI application: a Searcher (pipeline.search.index) and a function embedding a list
    of queries (`Embedder.embed_texts`)."""

    def __init__(
        self,
        searcher,
        embed_texts: Callable[[list[str]], np.ndarray],
        title: str = "Video search",
        max_batch: int = MAX_BATCH,
    ):
        self.searcher = searcher
        self.encoder = QueryEncoder(embed_texts, max_batch)
        self.title = title

    def search(self, query: str, k: int):
        return self.searcher.search(self.encoder.embed(query), k)

    def close(self) -> None:
        self.encoder.close()

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        # WSGI hands the percent-decoded path over as latin-1 characters, one per byte: get the bytes back
        path = environ.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")
        response = self.respond(method, path, environ.get("QUERY_STRING", ""))
        level = logging.INFO if response.status >= 400 else logging.DEBUG
        log.log(level, "%s %s %s -> %d", environ.get("REMOTE_ADDR", "-"), method, shown(path, 200), response.status)
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *HEADERS.items(),
            *response.headers.items(),
        ]
        start_response(f"{response.status.value} {response.status.phrase}", headers)
        return [] if method == "HEAD" else [response.body]

    def respond(self, method: str, path: str, query_string: str) -> Response:
        """The answer to one request: a page, a frame, JSON, or an error that says what is wrong."""
        if method not in ("GET", "HEAD"):
            return Response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{shown(method)} is not served here; use GET.\n".encode(),
                "text/plain; charset=utf-8",
                {"Allow": "GET, HEAD"},
            )
        params: dict = {}
        try:
            try:
                params = parse_qs(query_string, keep_blank_values=True, max_num_fields=MAX_PARAMS)
            except ValueError:
                raise BadRequest(
                    HTTPStatus.BAD_REQUEST,
                    f"The address has more than {MAX_PARAMS} parameters; this site reads only q and k.",
                ) from None
            return self._route(path, params)
        except BadRequest as e:
            if path == "/api/search":
                return json_response(e.status, {"error": e.message})
            return html_response(
                e.status,
                self._page(self.title, f'<p class="error" id="error">{escape(e.message)}</p>', _first(params, "q")),
            )
        except Exception:
            log.exception("GET %s?%s failed", shown(path, 200), shown(query_string, 200))
            return html_response(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                self._page(self.title, '<p class="error" id="error">The search failed; the server log says why.</p>'),
            )

    def _route(self, path: str, params: dict) -> Response:
        parts = [p for p in path.split("/") if p]
        if path == "/":
            return self._home(params)
        if path == "/style.css":
            return Response(HTTPStatus.OK, STYLE.encode(), "text/css; charset=utf-8")
        if path == "/api/search":
            return self._api(params)
        if len(parts) == 2 and parts[0] == "item":
            item_id = self._item_id(parts[1])
            return html_response(
                HTTPStatus.OK, self._page(self.title, self._item_html(item_id, params), _first(params, "q"))
            )
        if len(parts) == 3 and parts[0] == "frame":
            return self._frame(self._item_id(parts[1]), parts[2])
        raise BadRequest(HTTPStatus.NOT_FOUND, f"No page at {shown(path)}.")

    # ------------------------------------------------------------------------------------------ routes

    def _home(self, params: dict) -> Response:
        if "q" not in params:
            body = f'<p class="meta">{len(self.searcher.collection)} items indexed. Type a description of a clip.</p>'
            return html_response(HTTPStatus.OK, self._page(self.title, body))
        query, k = parse_query(params)
        hits = self.search(query, k)
        return html_response(
            HTTPStatus.OK, self._page(f"{query} - {self.title}", self._results_html(query, k, hits), query)
        )

    def _api(self, params: dict) -> Response:
        query, k = parse_query(params)
        hits = self.search(query, k)
        return json_response(
            HTTPStatus.OK,
            {
                "query": query,
                "k": k,
                "results": [
                    {
                        "rank": h.rank,
                        "id": h.id,
                        "score": h.score,
                        "key": h.item["key"],
                        "caption": h.item.get("caption"),
                        "source": h.item.get("source"),
                        "thumbnail": f"/frame/{h.id}/0",
                        "page": f"/item/{h.id}",
                    }
                    for h in hits
                ],
            },
        )

    def _item_id(self, text: str) -> int:
        count = len(self.searcher.collection)
        if not NUMBER.fullmatch(text) or int(text) >= count:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"No item with id {shown(text)} (ids run from 0 to {count - 1}).")
        return int(text)

    def _frame(self, item_id: int, name: str) -> Response:
        stored = len(self.searcher.collection.items[item_id]["frames"])
        match = FRAME_NAME.fullmatch(name)
        if not match or int(match[1]) >= stored:
            raise BadRequest(
                HTTPStatus.NOT_FOUND,
                f"Item {item_id} has no stored frame {shown(name)} (it has {stored}, numbered from 0).",
            )
        index = int(match[1])
        try:
            data = self.searcher.collection.frame(item_id, index)
        except OSError as e:  # the shard was truncated, replaced or deleted after extraction
            log.warning("frame %d of item %d: %s", index, item_id, e)
            raise BadRequest(
                HTTPStatus.NOT_FOUND,
                f"The stored frame {index} of item {item_id} cannot be read: "
                f"its shard changed or went missing after extraction "
                f"(the server log names the file).",
            ) from None
        return Response(HTTPStatus.OK, data, "image/jpeg")

    # ------------------------------------------------------------------------------------------ html

    @staticmethod
    def _page(title: str, body: str, query: str = "") -> str:
        return (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(shown(title, 200))}'
            f'</title><link rel="stylesheet" href="/style.css"></head><body><header><form action="/" '
            f'method="get" role="search"><input type="search" id="q" name="q" '
            f'value="{escape(query[:MAX_QUERY_CHARS])}" autofocus placeholder="Describe a clip, e.g. a red '
            f'square moves to the left" aria-label="query"><button id="go" type="submit">Search</button>'
            f'</form></header><main>{body}</main></body></html>'
        )

    def _results_html(self, query: str, k: int, hits) -> str:
        back = escape(f"q={quote(query)}&k={k}")  # the item page links back to these results
        items = []
        for hit in hits:
            item = hit.item
            caption = item.get("caption")
            source = item.get("source") or {}
            where = source.get("path") or source.get("url") or ""
            items.append(
                f'<li class="hit" data-rank="{hit.rank}" data-id="{hit.id}" data-key="{escape(item["key"])}">'
                f'<a href="/item/{hit.id}?{back}"><img src="/frame/{hit.id}/0" alt="first frame of '
                f'{escape(item["key"])}"></a><p class="caption">'
                f'{escape(caption) if caption else "<em>(no caption)</em>"}</p>'
                f'<p class="meta"><span class="rank">#{hit.rank}</span> \u00b7 score '
                f'<span class="score">{hit.score:.4f}</span> \u00b7 id {hit.id} \u00b7 {escape(item["key"])}<br>'
                f'<span class="source">{escape(where)}</span></p></li>'
            )
        summary = (
            f'<p class="meta" id="summary">{len(hits)} results for \u201c{escape(query)}\u201d in '
            f'{len(self.searcher.collection)} items ({escape(self.searcher.info.kind)} index)</p>'
        )
        return summary + f'<ol class="results" id="results">{"".join(items)}</ol>'

    def _item_html(self, item_id: int, params: dict) -> str:
        item = self.searcher.collection.items[item_id]
        back = ""
        query = _first(params, "q").strip()
        if query:
            k = _first(params, "k")
            k = k if NUMBER.fullmatch(k) and 1 <= int(k) <= MAX_K else str(DEFAULT_K)
            back = (
                f'<a class="back" id="back" href="/?{escape(f"q={quote(query[:MAX_QUERY_CHARS])}&k={k}")}">'
                f'\u2190 results for \u201c{escape(shown(query, MAX_QUERY_CHARS))}\u201d</a>'
            )
        source = item.get("source") or {}
        frames = "".join(
            f'<figure><img src="/frame/{item_id}/{i}" alt="stored frame {i}"><figcaption class="meta">'
            f'frame {i}</figcaption></figure>'
            for i in range(len(item["frames"]))
        )
        captions = "".join(f"<li>{escape(c)}</li>" for c in item.get("captions") or [])
        return (
            f'{back}<h2 class="caption">{escape(item.get("caption") or item["key"])}</h2>'
            f'<p class="meta">id {item_id} \u00b7 key {escape(item["key"])} \u00b7 {escape(item.get("kind"))}'
            f' \u00b7 source {escape(source.get("path") or "")} {escape(source.get("url") or "")}</p>'
            f'<div class="frames" id="frames">{frames}</div><ul>{captions}</ul>'
        )


def _first(params: dict, name: str) -> str:
    return params.get(name, [""])[0]


def parse_query(params: dict) -> tuple[str, int]:
    """(query, k) from the query-string fields; BadRequest saying what to fix."""
    query = _first(params, "q").strip()
    if not query:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST, "Type a few words to search for, e.g. \u201ca red square moves to the left\u201d."
        )
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST, f"The query is {len(query)} characters long; keep it under {MAX_QUERY_CHARS}."
        )
    raw_k = params.get("k", [str(DEFAULT_K)])[0]
    if not NUMBER.fullmatch(raw_k) or not 1 <= int(raw_k) <= MAX_K:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST, f"k must be a whole number between 1 and {MAX_K}, got \u201c{shown(raw_k)}\u201d."
        )
    return query, int(raw_k)
