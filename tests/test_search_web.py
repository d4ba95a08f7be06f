"""The search page: routes, escaping, errors, hostile input, concurrent and slow clients, and a real headless
Chromium typing a query and checking the layout."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pipeline.search.collection import INFO_FILE, ITEMS_FILE
from pipeline.search.index import Searcher
from pipeline.search.server import make_server
from pipeline.search.webapp import QueryEncoder, SearchApp
from test_search_helpers import EVIL_CAPTION, EVIL_KEY, collection, embedder, search_shards, tar_member, tiny_weights  # noqa: F401

pytestmark = pytest.mark.timeout(300)
EVIL_QUERY = '<script>alert("q")</script> "quoted" & more'


@contextlib.contextmanager
def running_server(searcher, embedder, **options):
    """A search server on a free port of 127.0.0.1, served from a thread: yields its base url."""
    srv = make_server(SearchApp(searcher, embedder.embed_texts), "127.0.0.1", 0, **options)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    host, port = srv.server_address[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(30)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def server(collection, embedder):
    searcher = Searcher(collection)
    with running_server(searcher, embedder) as base:
        yield base, searcher


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def address(base: str) -> tuple[str, int]:
    url = urllib.parse.urlsplit(base)
    return url.hostname, url.port


def raw_get(base: str, target: bytes, timeout: float = 60, method: bytes = b"GET") -> tuple[int, dict, bytes]:
    """GET `target` sent byte for byte over a fresh socket (urllib refuses or re-quotes hostile urls):
    (status, headers with lower-case names, body). The whole response is read up to the server's close."""
    with socket.create_connection(address(base), timeout=timeout) as s:
        s.sendall(
            method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def q(text: str) -> str:
    return urllib.parse.quote(text)


def test_results_are_ranked_and_everything_is_escaped(server, embedder):
    base, searcher = server
    status, headers, body = get(f"{base}/?q={q(EVIL_CAPTION)}&k=9")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert (
        "script-src" not in headers["Content-Security-Policy"]
        and "default-src 'none'" in headers["Content-Security-Policy"]
    )  # no script may run, inline or not
    assert (
        "<script" not in page
        and "<img src=x" not in page
        and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    )
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;" in page
    hits = searcher.search(embedder.embed_texts([EVIL_CAPTION])[0], 9)
    order = [int(part.split('"')[0]) for part in page.split('class="hit" data-rank="')[1:]]
    assert order == [h.rank for h in hits] == list(range(1, 10))
    ids = [int(part.split('"')[0]) for part in page.split('data-id="')[1:]]
    assert ids == [h.id for h in hits]
    assert f'data-key="{EVIL_KEY}"' in page and "/videos/clip_0_0.mp4" in page

    status, _, body = get(f"{base}/?q={q(EVIL_QUERY)}")
    page = body.decode()
    assert status == 200 and "<script" not in page
    assert 'value="&lt;script&gt;alert(&quot;q&quot;)&lt;/script&gt; &quot;quoted&quot; &amp; more"' in page


def test_api_frames_and_item_page(server, embedder, search_shards):
    base, searcher = server
    status, headers, body = get(f"{base}/api/search?q={q('clip 2 1 with coloured blocks')}&k=3")
    result = json.loads(body)
    hits = searcher.search(embedder.embed_texts(["clip 2 1 with coloured blocks"])[0], 3)
    assert status == 200 and [r["id"] for r in result["results"]] == [h.id for h in hits]
    assert [r["rank"] for r in result["results"]] == [1, 2, 3]
    first = result["results"][0]
    item = searcher.collection.items[first["id"]]
    status, headers, body = get(base + first["thumbnail"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body == tar_member(search_shards / item["shard"], f"{item['key']}.000.jpg")
    status, _, body = get(base + first["page"])
    assert status == 200 and body.decode().count(f'src="/frame/{first["id"]}/') == 8
    evil_id = next(i for i, it in enumerate(searcher.collection.items) if it["key"] == EVIL_KEY)
    page = get(f"{base}/item/{evil_id}?q={q(EVIL_QUERY)}&k=5")[2].decode()
    assert "<script" not in page and "&lt;script&gt;alert(&quot;pwned&quot;)" in page
    # the link back to the results carries the query url-encoded, and shows it escaped
    assert 'href="/?q=%3Cscript%3Ealert%28%22q%22%29%3C/script%3E%20%22quoted%22%20%26%20more&amp;k=5"' in page


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/?q=", 400, "Type a few words"),
        ("/?q=%20%20", 400, "Type a few words"),
        ("/?q=red&k=abc", 400, "k must be a whole number"),
        ("/?q=red&k=0", 400, "between 1 and 100"),
        ("/?q=" + "a" * 501, 400, "keep it under 500"),
        ("/item/999", 404, "No item with id 999"),
        ("/item/-1", 404, "No item with id -1"),
        ("/frame/0/8", 404, "no stored frame 8"),
        ("/nowhere", 404, "No page at /nowhere"),
        ("/%3Cscript%3E", 404, "No page at /&lt;script&gt;"),
    ],
)
def test_bad_requests_get_clear_errors(server, path, status, message):
    base, _ = server
    got, _, body = get(base + path)
    assert got == status and message in body.decode()
    got, _, body = get(f"{base}/api/search?q=")
    assert got == 400 and "Type a few words" in json.loads(body)["error"]


def test_serve_refuses_a_collection_without_index(collection, tmp_path, capsys):
    from launch import search as cli

    bare = tmp_path / "bare"
    shutil.copytree(collection, bare, ignore=shutil.ignore_patterns("index.*"))
    assert cli.main(["serve", str(bare), "--port", "0"]) == 2
    assert "no search index in" in capsys.readouterr().err


def test_serve_cli_answers_until_ctrl_c(collection, capsys):
    from pipeline.train.distributed import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.search", "serve", str(collection), "--port", str(port), "--threads", "2"],
        cwd=Path(__file__).resolve().parents[1],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(240):  # the model loads first
            try:
                status, _, body = get(f"http://127.0.0.1:{port}/api/search?q=red&k=3")
                break
            except urllib.error.URLError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        assert status == 200 and [r["rank"] for r in json.loads(body)["results"]] == [1, 2, 3]
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert f"serving 9 items on http://127.0.0.1:{port}/" in stderr
    from launch import search as cli

    assert cli.main(["serve", str(collection), "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- hostile input

HOSTILE_VALUES = [
    b"%C2%B2",  # superscript two: str.isdigit() says yes, int() says no (it was a 500)
    b"\xc2\xb2",  # the same sent as raw UTF-8
    b"%D9%A3",
    b"%EF%BC%91",  # Arabic-Indic three, fullwidth one: int() reads them as numbers
    b"-1",
    b"+1",
    b"%201",
    b"1%20",
    b"1_0",
    b"0x1",
    b"1e3",
    b"1.5",
    b"NaN",
    b"0.jpg",
    b"0.jpg.jpg",
    b"9" * 19,
    b"9" * 5000,  # past int64; past int()'s 4300-digit limit
    b"",
    b"%00",
    b"%",
    b"%ZZ",
    b"%C0%AF",
    b"%FF%FE",
    b"%ED%A0%80",  # empty, NUL, broken percent-encoding, bad UTF-8
    b"..",
    b"..%2F..%2F..%2Fetc%2Fpasswd",
    b"%2e%2e%2f%2e%2e%2f",
    b"....//....//etc/passwd",
    b"%3Cscript%3Ealert(1)%3C/script%3E",
]
ROUTES = [
    b"/item/{v}",
    b"/item/0?q={v}&k={v}",
    b"/item/{v}?q=red&k=3",
    b"/frame/{v}/0",
    b"/frame/0/{v}",
    b"/frame/{v}/{v}",
    b"/?q={v}",
    b"/?q=red&k={v}",
    b"/?k={v}",
    b"/api/search?q={v}",
    b"/api/search?q=red&k={v}",
    b"/api/search?k={v}",
    b"/{v}",
    b"/item/0/{v}",
    b"/style.css?{v}",
]
LONG_TARGETS = [
    b"/?q=" + b"a" * 200_000,  # a very long query
    b"/api/search?q=" + b"%" * 100_000,
    b"/?" + b"&".join(b"k%d=1" % i for i in range(20_000)),  # very many parameters
    b"/item/" + b"1" * 100_000,
]


def response_problems(status: int, headers: dict, body: bytes) -> list[str]:
    """What is wrong with an answer to a hostile request: a server error, an empty or short body, a frame
    that is not a whole JPEG."""
    problems = []
    if status >= 500:
        problems.append(f"status {status}: {body[:200]!r}")
    if not body:
        problems.append(f"status {status} with an empty body")
    if "content-length" in headers and int(headers["content-length"]) != len(body):
        problems.append(f"Content-Length {headers['content-length']} but {len(body)} bytes came")
    if (
        status == 200
        and headers.get("content-type") == "image/jpeg"
        and not (body.startswith(b"\xff\xd8") and body.endswith(b"\xff\xd9"))
    ):
        problems.append("a 200 image that is not a whole JPEG")
    return problems


@pytest.mark.parametrize("route", ROUTES, ids=[r.decode() for r in ROUTES])
def test_hostile_parameters_never_crash_or_answer_empty(server, route):
    base, _ = server
    failures = []
    for value in HOSTILE_VALUES:
        target = route.replace(b"{v}", value)
        failures += [f"{target[:60]!r}: {p}" for p in response_problems(*raw_get(base, target))]
    assert not failures


def test_very_long_requests_get_clear_errors(server):
    base, _ = server
    for target in LONG_TARGETS:
        status, headers, body = raw_get(base, target)
        assert 400 <= status < 500 and not response_problems(status, headers, body), (target[:40], status, body[:200])
    # past the server's request size limit (256 kB of headers) the server answers 431 and hangs up; while the
    # client is still sending, TCP turns that hang-up into a reset. Either way the server goes on serving.
    try:
        status, headers, body = raw_get(base, b"/?q=red&x=" + b"x" * 300_000)
        assert status == 431 and body
    except ConnectionResetError:
        pass
    assert get(f"{base}/?q=red")[0] == 200
    # HEAD answers the headers of GET; other methods are refused with what is allowed
    status, headers, body = raw_get(base, b"/?q=red", method=b"HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000
    for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
        status, headers, body = raw_get(base, b"/api/search?q=red", method=method)
        assert status == 405 and headers["allow"] == "GET, HEAD" and b"use GET" in body
    # and numbers written strictly in ASCII digits still work, with or without the frame's .jpg suffix
    for target in (b"/item/0", b"/frame/0/0", b"/frame/0/7.jpg", b"/?q=red&k=3", b"/api/search?q=red&k=100"):
        status, headers, body = raw_get(base, target)
        assert status == 200 and not response_problems(status, headers, body), target


def copy_collection(collection: Path, dest: Path, shards: Path | None = None) -> Path:
    """A copy of a collection folder, optionally pointed at a copy of its shards."""
    shutil.copytree(collection, dest)
    if shards is not None:
        info = json.loads((dest / INFO_FILE).read_text())
        shutil.copytree(info["shards_dir"], shards)
        info["shards_dir"] = str(shards)
        (dest / INFO_FILE).write_text(json.dumps(info))
    return dest


def test_frames_of_a_truncated_or_missing_shard_are_errors_not_empty_images(collection, embedder, tmp_path):
    coll = copy_collection(collection, tmp_path / "coll", shards=tmp_path / "shards")
    searcher = Searcher(coll)
    items = searcher.collection.items
    stored = {
        (it["id"], i): tar_member(tmp_path / "shards" / it["shard"], f"{it['key']}.{i:03d}.jpg")
        for it in items
        for i in range(len(it["frames"]))
    }
    # cut shard 0 in the middle of the 4th frame of its second item; delete shard 2 altogether
    cut_item = [it for it in items if it["shard"] == "search-000000.tar"][1]
    offset, size = cut_item["frames"][3]
    cut_at = offset + size // 2
    with open(tmp_path / "shards" / "search-000000.tar", "r+b") as f:
        f.truncate(cut_at)
    (tmp_path / "shards" / "search-000002.tar").unlink()
    with pytest.raises(OSError, match="search-000000.tar"):  # the library says which file is short
        searcher.collection.frame(cut_item["id"], 3)

    served = broken = 0
    with running_server(searcher, embedder) as base:
        for item in items:
            for i, (offset, size) in enumerate(item["frames"]):
                status, headers, body = raw_get(base, f"/frame/{item['id']}/{i}".encode())
                readable = item["shard"] == "search-000001.tar" or (
                    item["shard"] == "search-000000.tar" and offset + size <= cut_at
                )
                if readable:
                    assert (status, body) == (200, stored[item["id"], i])
                    served += 1
                else:
                    assert status == 404 and f"frame {i} of item {item['id']} cannot be read".encode() in body
                    broken += 1
        # the pages that read no frame still work
        assert get(f"{base}/item/{cut_item['id']}")[0] == 200 and get(f"{base}/?q=red")[0] == 200
    assert served and broken > 8  # both kinds were exercised


# ---------------------------------------------------------------------------------------------- concurrency

QUERIES = [f"clip {s} {i} with coloured blocks" for s in range(3) for i in range(3)] + [
    EVIL_CAPTION,
    "a red square moves to the left",
    "blocks",
    "\u00fcnicode \u2603 query",
    "x" * 400,
]


def expected_results(searcher, embedder, k: int) -> dict:
    """What each query must return: the index searched with the query embedded on its own."""
    return {text: [(h.id, h.score) for h in searcher.search(embedder.embed_texts([text])[0], k)] for text in QUERIES}


def answer_problems(base: str, n: int, expected: dict, k: int) -> list[str]:
    """Client n asks one query (the JSON api or the page, by turns) and checks the whole answer."""
    text = QUERIES[n % len(QUERIES)]
    want = expected[text]
    if n % 2:
        status, _, body = raw_get(base, f"/api/search?q={q(text)}&k={k}".encode())
        got = [(r["id"], r["score"]) for r in json.loads(body)["results"]] if status == 200 else []
    else:
        status, _, body = raw_get(base, f"/?q={q(text)}&k={k}".encode())
        page = body.decode()
        ids = [int(part.split('"')[0]) for part in page.split('data-id="')[1:]]
        scores = [float(part.split("<")[0]) for part in page.split('class="score">')[1:]]
        got = list(zip(ids, scores))
        if not page.rstrip().endswith("</html>"):
            return [f"client {n}: the page is cut short"]
    if (
        status != 200
        or [i for i, _ in got] != [i for i, _ in want]
        or any(abs(a - b) > 1e-4 for (_, a), (_, b) in zip(got, want))
    ):
        return [f"client {n} ({text[:30]!r}): status {status}, got {got}, want {want}"]
    return []


def concurrent_clients(base: str, clients: int, expected: dict, k: int) -> list[str]:
    """`clients` threads released together, one request each; the problems they saw."""
    release = threading.Barrier(clients)

    def client(n):
        release.wait(timeout=60)
        return answer_problems(base, n, expected, k)

    with ThreadPoolExecutor(clients) as pool:
        return [p for problems in pool.map(client, range(clients)) for p in problems]


def test_concurrent_clients_all_get_complete_correct_answers(server, embedder):
    base, searcher = server
    expected = expected_results(searcher, embedder, 5)
    assert not concurrent_clients(base, 100, expected, 5)


def test_query_encoder_batches_waiting_queries_on_one_thread(embedder):
    threads, batches, release = set(), [], threading.Event()

    def embed_texts(texts):
        threads.add(threading.get_ident())
        batches.append(list(texts))
        release.wait(60)  # the first batch holds the encoder while the other queries queue up
        if "boom" in texts:
            raise RuntimeError("the model failed")
        return embedder.embed_texts(texts)

    encoder = QueryEncoder(embed_texts, max_batch=8)
    texts = QUERIES + [f"query {i}" for i in range(20 - len(QUERIES))]
    with ThreadPoolExecutor(20) as pool:
        first = pool.submit(encoder.embed, texts[0])
        while not batches:
            time.sleep(0.01)
        rest = [pool.submit(encoder.embed, text) for text in texts[1:]]
        while encoder._waiting.qsize() < len(rest):
            time.sleep(0.01)
        release.set()
        vectors = [first.result(60)] + [f.result(60) for f in rest]
    assert [len(b) for b in batches] == [1, 8, 8, 3] and len(threads) == 1
    assert sorted(t for b in batches for t in b) == sorted(texts)
    for text, vector in zip(texts, vectors):  # batched or not, each query gets its own vector
        np.testing.assert_allclose(vector, embedder.embed_texts([text])[0], atol=1e-5)
    # a failing forward pass fails the queries of its batch with the reason, and the encoder goes on
    with pytest.raises(RuntimeError, match="embedding the query failed: RuntimeError..the model failed"):
        encoder.embed("boom")
    np.testing.assert_allclose(encoder.embed("red"), embedder.embed_texts(["red"])[0], atol=1e-5)
    encoder.close()
    with pytest.raises(RuntimeError, match="closed"):
        encoder.embed("red")


def listen_backlog(port: int) -> int:
    """The backlog the kernel holds for a listening TCP port (`ss` shows it as Send-Q)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[2])


@pytest.mark.skipif(not shutil.which("ss"), reason="needs ss (iproute2)")
def test_the_listen_backlog_holds_a_burst_of_clients(server):
    # Python's default of 5 made SYNs of a burst of clients drop and retry after 1, 3, 7, 15 s...
    assert listen_backlog(address(server[0])[1]) >= 1024


def test_slow_clients_do_not_block_others_and_idle_ones_are_dropped(collection, embedder):
    searcher = Searcher(collection)
    expected = expected_results(searcher, embedder, 3)
    with running_server(searcher, embedder, threads=2, idle_timeout=2) as base:
        slow = []
        for n in range(30):  # many more slow clients than worker threads
            s = socket.create_connection(address(base), timeout=60)
            if n % 3 == 1:  # headers trickled in and never finished (slowloris)
                s.sendall(b"GET /?q=red HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: b")
            elif n % 3 == 2:  # a whole request whose answer is never read, on a kept-alive connection
                s.sendall(f"GET /?q={q('x' * 400)}&k=100 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            slow.append(s)  # n % 3 == 0: connects and sends nothing
        try:
            assert not concurrent_clients(base, 20, expected, 3)
            # the server hangs up on connections idle past idle_timeout (here 2 s; this socket would wait 60 s)
            for s in slow:
                while s.recv(1 << 16):
                    pass
        finally:
            for s in slow:
                s.close()


# ---------------------------------------------------------------------------------------------- browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    if not CHROMIUM or not Path(CHROMEDRIVER).exists():
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    """Under the test's tmp dir and, when FIT_ARTIFACTS is set, copied there for CI to keep."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    if os.environ.get("FIT_ARTIFACTS"):
        Path(os.environ["FIT_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["FIT_ARTIFACTS"]) / name)
    return path


def browse_and_search(driver, base: str, query: str):
    """Type `query` in the page's box and submit; return the result items in page order."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/")
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(query)
    box.send_keys(Keys.ENTER)
    WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.ID, "results")))
    return driver.find_elements(By.CSS_SELECTOR, "#results li.hit")


@pytest.mark.browser
def test_browser_types_a_query_and_sees_ranked_thumbnails(browser, server, embedder, tmp_path):
    from selenium.webdriver.common.by import By

    base, searcher = server
    query = "clip 1 0 with coloured blocks"
    items = browse_and_search(browser, base, query)
    hits = searcher.search(embedder.embed_texts([query])[0], 12)
    assert [int(li.get_attribute("data-id")) for li in items] == [h.id for h in hits]
    assert [li.find_element(By.CLASS_NAME, "rank").text for li in items] == [f"#{h.rank}" for h in hits]
    scores = [float(li.find_element(By.CLASS_NAME, "score").text) for li in items]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(hits[0].score, abs=1e-4)
    # thumbnails really loaded (decoded by the browser), and the evil caption shows as plain text
    loaded = browser.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth)")
    assert len(loaded) == len(hits) and all(w == 64 for w in loaded)
    evil = [li for li in items if li.get_attribute("data-key") == EVIL_KEY]
    assert evil and evil[0].find_element(By.CLASS_NAME, "caption").text == EVIL_CAPTION
    assert browser.execute_script("return document.querySelectorAll('main script, main img[src=x]').length") == 0
    assert browser.find_element(By.ID, "q").get_attribute("value") == query
    save_screenshot(browser, tmp_path, "search_results.png")

    # click the first thumbnail: the item page shows every stored frame
    items[0].find_element(By.TAG_NAME, "a").click()
    frames = browser.find_elements(By.CSS_SELECTOR, "#frames img")
    assert len(frames) == 8
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('#frames img')).every(i => i.complete && i.naturalWidth === 64)"
    )
    save_screenshot(browser, tmp_path, "search_item.png")
    browser.find_element(By.ID, "back").click()
    again = browser.find_elements(By.CSS_SELECTOR, "#results li.hit")
    assert [int(li.get_attribute("data-id")) for li in again] == [h.id for h in hits]

    # an empty query gives the error message, not a crash
    browser.get(base + "/?q=")
    assert "Type a few words" in browser.find_element(By.ID, "error").text


# every card's content (elements and text runs) inside the card, no two cards overlapping, no sideways scroll
LAYOUT_PROBLEMS_JS = """
const problems = [];
const inside = (r, c) => r.left >= c.left - 0.5 && r.right <= c.right + 0.5
  && r.top >= c.top - 0.5 && r.bottom <= c.bottom + 0.5;
const box = (r) => `x ${Math.round(r.left)}..${Math.round(r.right)}, y ${Math.round(r.top)}..${Math.round(r.bottom)}`;
const cards = Array.from(document.querySelectorAll(arguments[0]));
cards.forEach((card, n) => {
  const c = card.getBoundingClientRect();
  const walker = document.createTreeWalker(card, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    let rects = [node.getBoundingClientRect ? node.getBoundingClientRect() : null];
    if (node.nodeType === Node.TEXT_NODE) {
      const range = document.createRange();
      range.selectNodeContents(node);
      rects = Array.from(range.getClientRects());
    }
    for (const r of rects) {
      if (r && r.width > 0 && !inside(r, c)) {
        const what = `${node.nodeName} "${(node.textContent || '').slice(0, 30)}"`;
        problems.push(`card ${n}: ${what} spans ${box(r)}; the card ${box(c)}`);
        break;
      }
    }
  }
  cards.slice(n + 1).forEach((other, m) => {
    const o = other.getBoundingClientRect();
    if (c.left < o.right && o.left < c.right && c.top < o.bottom && o.top < c.bottom) {
      problems.push(`cards ${n} and ${n + 1 + m} overlap`);
    }
  });
});
const page = document.documentElement;
if (page.scrollWidth > page.clientWidth) {
  problems.push(`the page scrolls sideways: ${page.scrollWidth} > ${page.clientWidth} px`);
}
return [cards.length, problems];
"""


@pytest.fixture(scope="module")
def long_names_server(collection, embedder, tmp_path_factory):
    """The collection with long source paths, urls, keys and captions (most without a space to break at)."""
    coll = copy_collection(collection, tmp_path_factory.mktemp("long_names") / "coll")
    items = [json.loads(line) for line in (coll / ITEMS_FILE).read_text().splitlines()]
    for n, item in enumerate(items):
        item["source"] = [
            {"path": "/mnt/archive/" + "a_very_long_folder_name_without_any_space_" * 8 + "clip.mp4"},
            {"path": None, "url": "https://videos.example.com/watch?v=" + "Ab9" * 90 + "&list=" + "x" * 120},
            {"path": "/data/" + "deep/" * 60 + "clip.mp4"},
            {"path": f"/videos/{item['key']}.mp4"},
        ][n % 4]
        if n % 3 == 1:
            item["key"] = f"{item['key']}_" + "k" * 150
        if n % 3 == 2:
            item["caption"] = "supercalifragilistic" * 15
    (coll / ITEMS_FILE).write_text("".join(json.dumps(it) + "\n" for it in items))
    with running_server(Searcher(coll), embedder) as base:
        yield base, len(items)


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 700])
def test_browser_long_paths_stay_inside_their_cards(browser, long_names_server, width, tmp_path):
    from selenium.webdriver.common.by import By

    base, count = long_names_server
    browser.set_window_size(width, 900)
    items = browse_and_search(browser, base, "clip 1 0 with coloured blocks")
    assert len(items) == count  # every item, so every kind of long name, is on the page
    shown, problems = browser.execute_script(LAYOUT_PROBLEMS_JS, "#results li.hit")
    save_screenshot(browser, tmp_path, f"search_long_names_{width}.png")
    assert shown == count and not problems
    # the item page of each long-named item: no text runs out of the page
    for n in range(4):
        browser.get(f"{base}/item/{n}")
        assert browser.find_elements(By.ID, "frames")
        assert browser.execute_script(LAYOUT_PROBLEMS_JS, "main")[1] == []
