"""The search page's server: waitress serving a `SearchApp` (pipeline/search/webapp.py).

Serving many users (docs/SEARCH.md, figures in docs/bench/search.md): the page is a WSGI application
served by waitress. Its single I/O thread reads and writes every connection without blocking, and only a
complete request goes to one of a fixed pool of worker threads, so a client that connects and sends nothing,
trickles its headers or never reads its answer holds a socket, never a worker; idle connections are closed
after `idle_timeout` seconds. The listen backlog is 1024 (the standard library server's 5 dropped the SYNs
of a burst of clients, who then waited for TCP's retries: 78 of 200 concurrent requests took over 30 s).
"""

import threading
from urllib.parse import quote

from waitress import wasyncore
from waitress.server import create_server
from waitress.trigger import trigger

from pipeline.search.webapp import SearchApp

# Workers. A worker waits on the encoder while its query is embedded, so workers bound the batch size:
# with 32, 100 clients cost 0.9 ms of server CPU per query against 1.6-2.0 ms with 8 (docs/bench/search.md).
DEFAULT_THREADS = 32
DEFAULT_IDLE_TIMEOUT = 30  # seconds a connection may stay silent (keep-alive or an unfinished request)
DEFAULT_MAX_CONNECTIONS = 1000  # open connections; past it the server stops accepting until some close
BACKLOG = 1024  # connections the kernel queues before they are accepted


class SearchServer:
    """waitress serving a SearchApp, driven like socketserver's servers: `serve_forever()` (blocks; run it
    on a thread to stop it from another), `shutdown()`, `server_close()`, `server_address`."""

    def __init__(self, app: SearchApp, host: str, port: int, threads: int, idle_timeout: int, max_connections: int):
        self.app = app
        self._map: dict = {}
        self._server = create_server(
            app,
            map=self._map,
            host=host,
            port=port,
            threads=threads,
            backlog=BACKLOG,
            connection_limit=max_connections,
            channel_timeout=idle_timeout,
            cleanup_interval=max(1, min(30, idle_timeout)),  # how often idle connections are looked for
            asyncore_use_poll=True,  # select() cannot watch sockets numbered past 1024
            max_request_body_size=1 << 16,  # GET only: no request needs a body
            ident="fit-search",
            clear_untrusted_proxy_headers=True,
        )
        self._wake = trigger(self._map)  # runs a function on the I/O thread (shutdown)
        listening = getattr(self._server, "effective_listen", None)  # several when `host` names several
        host, port = listening[0] if listening else (self._server.effective_host, self._server.effective_port)
        self.server_address = (host, int(port))  # waitress gives the port as text
        self._serving = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        self._serving.set()
        try:
            self._server.run()  # returns when every socket is closed (shutdown) or on Ctrl-C
        finally:
            self._server.task_dispatcher.shutdown()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and wait until it has returned."""
        if self._stopped.is_set():
            return
        self._wake.pull_trigger(lambda: wasyncore.close_all(self._map))  # a loop about to start runs it first
        if self._serving.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        """Release the sockets, the worker threads and the app's encoder thread."""
        wasyncore.close_all(self._map)
        self._server.task_dispatcher.shutdown()
        self.app.close()


def make_server(
    app: SearchApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    threads: int = DEFAULT_THREADS,
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> SearchServer:
    """A server bound to host:port (port 0 picks a free one: read `server.server_address`)."""
    return SearchServer(app, host, port, threads, idle_timeout, max_connections)


def search_url(host: str, port: int, query: str) -> str:
    return f"http://{host}:{port}/?q={quote(query)}"
