"""The search page: routes, escaping, errors, and a real headless Chromium typing a query."""
import json
import os
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline.index import Searcher
from pipeline.webapp import SearchApp, make_server
from test_search_helpers import (EVIL_CAPTION, EVIL_KEY, collection, embedder, search_shards,  # noqa: F401
                                 tar_member, tiny_weights)

pytestmark = pytest.mark.timeout(300)
EVIL_QUERY = '<script>alert("q")</script> "quoted" & more'


@pytest.fixture(scope="module")
def server(collection, embedder):
    searcher = Searcher(collection)
    app = SearchApp(searcher, lambda text: embedder.embed_texts([text])[0])
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    host, port = srv.server_address[:2]
    yield f"http://{host}:{port}", searcher
    srv.shutdown()
    srv.server_close()


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def q(text: str) -> str:
    return urllib.parse.quote(text)


def test_results_are_ranked_and_everything_is_escaped(server, embedder):
    base, searcher = server
    status, headers, body = get(f"{base}/?q={q(EVIL_CAPTION)}&k=9")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in headers[
        "Content-Security-Policy"]                   # no script may run, inline or not
    assert "<script" not in page and "<img src=x" not in page and "onerror=alert" not in page.replace(
        "onerror=alert(1)&gt;", "")
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


@pytest.mark.parametrize("path, status, message", [
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
])
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
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):
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
    assert browser.execute_script("return Array.from(document.querySelectorAll('#frames img'))"
                                  ".every(i => i.complete && i.naturalWidth === 64)")
    save_screenshot(browser, tmp_path, "search_item.png")
    browser.find_element(By.ID, "back").click()
    again = browser.find_elements(By.CSS_SELECTOR, "#results li.hit")
    assert [int(li.get_attribute("data-id")) for li in again] == [h.id for h in hits]

    # an empty query gives the error message, not a crash
    browser.get(base + "/?q=")
    assert "Type a few words" in browser.find_element(By.ID, "error").text
