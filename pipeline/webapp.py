"""A local search page over a collection: text box -> ranked thumbnails -> a clip's stored frames.

Standard library only (http.server). Pages are rendered on the server and hold no script at all; every
piece of text that comes from a user or a dataset (query, captions, keys, paths, urls) goes through
`html.escape`, and the Content-Security-Policy forbids scripts anyway, so a caption such as
`<script>...</script>` shows as text. Source urls are shown as text, never as links (a dataset row could
say `javascript:`). Binds 127.0.0.1 unless told otherwise.

Routes: `/` (search form; `?q=...&k=...` adds results), `/item/<id>` (all stored frames of one item),
`/frame/<id>/<i>` (one stored JPEG frame, read from the shard by byte range), `/api/search?q=...&k=...`
(the same results as JSON), `/style.css`.
"""
from __future__ import annotations

import html
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_K = 12
MAX_K = 100
MAX_QUERY_CHARS = 500

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 70rem; padding: 0 1rem; color: #222; }
header form { display: flex; gap: .5rem; margin-bottom: 1rem; }
input[type=search] { flex: 1; font-size: 1.1rem; padding: .4rem .6rem; }
button { font-size: 1.1rem; padding: .4rem 1rem; }
.error { background: #fde8e8; border: 1px solid #e0a0a0; padding: .6rem .8rem; }
.meta { color: #666; font-size: .9rem; }
ol.results { list-style: none; padding: 0; display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr)); gap: 1rem; }
ol.results li { border: 1px solid #ddd; border-radius: 6px; padding: .5rem; }
ol.results img { width: 100%; height: 9rem; object-fit: cover; background: #eee; }
.caption { margin: .3rem 0; overflow-wrap: anywhere; }
.frames { display: flex; flex-wrap: wrap; gap: .5rem; }
.frames figure { margin: 0; }
.frames img { width: 14rem; image-rendering: auto; }
.back { display: inline-block; margin-bottom: .5rem; }
"""


def escape(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


class SearchApp:
    """What the handler needs: a Searcher (pipeline.index) and a function turning a query into a vector."""

    def __init__(self, searcher, embed_query: Callable[[str], np.ndarray], title: str = "Video search"):
        self.searcher = searcher
        self.embed_query = embed_query
        self.title = title
        self._lock = threading.Lock()   # one model forward at a time; requests are served by threads

    def search(self, query: str, k: int):
        with self._lock:
            vector = self.embed_query(query)
        return self.searcher.search(vector, k)


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _parse_query(params: dict) -> tuple[str, int]:
    query = params.get("q", [""])[0].strip()
    if not query:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "Type a few words to search for, e.g. "
                                                 "\u201ca red square moves to the left\u201d.")
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"The query is {len(query)} characters long; "
                                                 f"keep it under {MAX_QUERY_CHARS}.")
    raw_k = params.get("k", [str(DEFAULT_K)])[0]
    try:
        k = int(raw_k)
    except ValueError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"k must be a whole number, got \u201c{raw_k}\u201d.") from None
    if not 1 <= k <= MAX_K:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"k must be between 1 and {MAX_K}, got {k}.")
    return query, k


def _page(title: str, body: str, query: str = "") -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<link rel="stylesheet" href="/style.css"></head><body><header><form action="/" method="get" '
            f'role="search"><input type="search" id="q" name="q" value="{escape(query)}" autofocus '
            f'placeholder="Describe a clip, e.g. a red square moves to the left" aria-label="query">'
            f'<button id="go" type="submit">Search</button></form></header><main>{body}</main></body></html>')


def _results_html(app: SearchApp, query: str, k: int, hits) -> str:
    back = escape(f"q={quote(query)}&k={k}")   # the item page links back to these results
    items = []
    for hit in hits:
        item = hit.item
        caption = item.get("caption")
        source = item.get("source") or {}
        where = source.get("path") or source.get("url") or ""
        items.append(
            f'<li class="hit" data-rank="{hit.rank}" data-id="{hit.id}" data-key="{escape(item["key"])}">'
            f'<a href="/item/{hit.id}?{back}"><img src="/frame/{hit.id}/0" alt="first frame of {escape(item["key"])}">'
            f'</a><p class="caption">{escape(caption) if caption else "<em>(no caption)</em>"}</p>'
            f'<p class="meta"><span class="rank">#{hit.rank}</span> \u00b7 score '
            f'<span class="score">{hit.score:.4f}</span> \u00b7 id {hit.id} \u00b7 {escape(item["key"])}<br>'
            f'<span class="source">{escape(where)}</span></p></li>')
    summary = (f'<p class="meta" id="summary">{len(hits)} results for \u201c{escape(query)}\u201d in '
               f'{len(app.searcher.collection)} items ({escape(app.searcher.info.kind)} index)</p>')
    return summary + f'<ol class="results" id="results">{"".join(items)}</ol>'


def _item_html(app: SearchApp, item_id: int, params: dict) -> str:
    item = app.searcher.collection.items[item_id]
    back = ""
    if params.get("q", [""])[0].strip():
        query, k = params["q"][0].strip(), params.get("k", [str(DEFAULT_K)])[0]
        back = (f'<a class="back" id="back" href="/?{escape(f"q={quote(query)}&k={quote(k)}")}">'
                f'\u2190 results for \u201c{escape(query)}\u201d</a>')
    source = item.get("source") or {}
    frames = "".join(f'<figure><img src="/frame/{item_id}/{i}" alt="stored frame {i}"><figcaption class="meta">'
                     f'frame {i}</figcaption></figure>' for i in range(len(item["frames"])))
    captions = "".join(f"<li>{escape(c)}</li>" for c in item.get("captions") or [])
    return (f'{back}<h2 class="caption">{escape(item.get("caption") or item["key"])}</h2>'
            f'<p class="meta">id {item_id} \u00b7 key {escape(item["key"])} \u00b7 {escape(item.get("kind"))}'
            f' \u00b7 source {escape(source.get("path") or "")} {escape(source.get("url") or "")}</p>'
            f'<div class="frames" id="frames">{frames}</div><ul>{captions}</ul>')


def make_handler(app: SearchApp):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fit-search"
        sys_version = ""

        def do_GET(self):  # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            path = unquote(url.path)
            params = parse_qs(url.query, keep_blank_values=True)
            parts = [p for p in path.split("/") if p]
            try:
                if path == "/":
                    self._home(params)
                elif path == "/style.css":
                    self._send(HTTPStatus.OK, STYLE.encode(), "text/css; charset=utf-8")
                elif path == "/api/search":
                    self._api(params)
                elif len(parts) == 2 and parts[0] == "item":
                    item_id = self._item_id(parts[1])
                    self._html(HTTPStatus.OK, _page(app.title, _item_html(app, item_id, params),
                                                    params.get("q", [""])[0]))
                elif len(parts) == 3 and parts[0] == "frame":
                    self._frame(self._item_id(parts[1]), parts[2])
                else:
                    raise BadRequest(HTTPStatus.NOT_FOUND, f"No page at {path}.")
            except BadRequest as e:
                if path == "/api/search":
                    self._json(e.status, {"error": e.message})
                else:
                    query = params.get("q", [""])[0]
                    self._html(e.status, _page(app.title, f'<p class="error" id="error">{escape(e.message)}</p>',
                                               query))
            except Exception:
                log.exception("request %s failed", self.path)
                self._html(HTTPStatus.INTERNAL_SERVER_ERROR,
                           _page(app.title, '<p class="error" id="error">The search failed; '
                                            'the server log says why.</p>'))

        def _home(self, params):
            if "q" not in params:
                body = (f'<p class="meta">{len(app.searcher.collection)} items indexed. '
                        f'Type a description of a clip.</p>')
                self._html(HTTPStatus.OK, _page(app.title, body))
                return
            query, k = _parse_query(params)
            hits = app.search(query, k)
            self._html(HTTPStatus.OK, _page(f"{query} - {app.title}", _results_html(app, query, k, hits), query))

        def _api(self, params):
            query, k = _parse_query(params)
            hits = app.search(query, k)
            self._json(HTTPStatus.OK, {"query": query, "k": k, "results": [
                {"rank": h.rank, "id": h.id, "score": h.score, "key": h.item["key"],
                 "caption": h.item.get("caption"), "source": h.item.get("source"),
                 "thumbnail": f"/frame/{h.id}/0", "page": f"/item/{h.id}"} for h in hits]})

        def _item_id(self, text: str) -> int:
            if not text.isdigit() or int(text) >= len(app.searcher.collection):
                raise BadRequest(HTTPStatus.NOT_FOUND, f"No item with id {text}.")
            return int(text)

        def _frame(self, item_id: int, text: str):
            try:
                data = app.searcher.collection.frame(item_id, int(text.removesuffix(".jpg")))
            except (ValueError, IndexError):
                raise BadRequest(HTTPStatus.NOT_FOUND, f"Item {item_id} has no stored frame {text}.") from None
            self._send(HTTPStatus.OK, data, "image/jpeg")

        def _html(self, status, page: str):
            self._send(status, page.encode("utf-8"), "text/html; charset=utf-8")

        def _json(self, status, obj):
            self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

        def _send(self, status, data: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

    return Handler


def make_server(app: SearchApp, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0 picks a free one: read `server.server_address`)."""
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    return server


def search_url(host: str, port: int, query: str) -> str:
    return f"http://{host}:{port}/?q={quote(query)}"
