"""The web page in a real browser: Debian's chromium driven by Playwright against a live server.

The sample photos (data/photos) are copied to a temporary folder, with one more photo in a
folder whose path holds markup (`<b>x</b>`) and whose file name holds an `<img onerror>`;
they are indexed with the packaged photo model, and `create_app(index)` is served by uvicorn
on 127.0.0.1 in a background thread. In the browser: a text search (the cat photo first, the
query in the URL), load more, a result's detail with a word's heatmap, arrow keys and Esc,
more like this, back and forward, a photo uploaded and one dropped on the page, an API error
shown in the API's words, a narrow window; then a shared URL with a folder filter, whose
markup must show as text, and a date filter that leaves nothing. No page may log an error
(CSP violations included) or open a dialog.

Screenshots of each step go to $IMGSEARCH_SCREENSHOTS (default: the test's tmp_path).
Skipped, with the reason, only when the playwright package or /usr/bin/chromium is missing.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageOps

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
CHROMIUM = "/usr/bin/chromium"
if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium: apt-get install chromium)", allow_module_level=True)

import uvicorn  # noqa: E402

from imgsearch import Index  # noqa: E402
from imgsearch.model.packaged import default_model_dir  # noqa: E402
from imgsearch.server.app import create_app  # noqa: E402
from tests.conftest import draw_image  # noqa: E402

expect = sync_api.expect

PHOTOS = Path(__file__).parents[1] / "data" / "photos"
CATS = set(json.loads((PHOTOS / "queries.json").read_text())["a cat"])  # the photos "a cat" describes
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MARKUP_FOLDER = "<b>x</b>"  # a path holding it: folders "<b>x<" then "b>"
MARKUP_NAME = "dog <img src=x onerror=alert(1)>.jpg"
EXTRA_DRAWINGS = 3  # generated drawings beside the sample photos
PHOTO_COUNT = 24 + 1 + EXTRA_DRAWINGS  # the sample photos, the mirrored dog, the drawings
WAIT_MS = 60_000  # the first search of a fresh server also encodes the class names (seconds on 2 cores)


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser") / "photos"
    root.mkdir()
    for photo in PHOTOS.glob("*.jpg"):
        shutil.copy(photo, root / photo.name)
    odd = root / MARKUP_FOLDER
    odd.mkdir(parents=True)
    with Image.open(PHOTOS / "dog.jpg") as image:  # mirrored: its own content, not a copy of dog.jpg
        ImageOps.mirror(image.convert("RGB")).save(odd / MARKUP_NAME, quality=90)
    for seed in range(EXTRA_DRAWINGS):  # more photos than a page holds, once cat_720p.jpg folds into cat.jpg
        draw_image(seed, size=256).save(root / f"drawing_{seed}.png")
    return root


@pytest.fixture(scope="module")
def server(photo_root, tmp_path_factory):
    """Base URL of a live server over an index of the photos."""
    with Index.create(
        tmp_path_factory.mktemp("browser-index") / "index", model=default_model_dir(), device="cpu"
    ) as index:
        summary = index.add([photo_root], workers=0)
        assert (summary.added, summary.failed) == (PHOTO_COUNT, 0)
        # The model and the label score's class texts load here, once (8 s, far more on a busy
        # machine), not inside a page's wait for its first results.
        index.search("a photo", k=1)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with another process
        port = sock.getsockname()[1]
        uv = uvicorn.Server(uvicorn.Config(create_app(index), log_level="warning"))
        thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}/"
        try:
            _wait_for_health(base, thread)
            yield base
        finally:
            uv.should_exit = True
            thread.join(timeout=30)
            sock.close()


def _wait_for_health(base: str, thread: threading.Thread, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "api/health", timeout=5) as response:
                assert json.load(response)["status"] == "ok"
                return
        except OSError:
            if not thread.is_alive():
                pytest.fail("the server thread ended before /api/health answered")
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polling the condition, not a fixed wait


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("IMGSEARCH_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Problems:
    """What a page reported that it should not have: script errors, console errors (CSP
    violations land there), alert() dialogs."""

    def __init__(self, page, expected_statuses=()):
        self.items: list[str] = []
        self.expected = list(expected_statuses)  # "status of 415" etc.: console lines of API errors the test asks for
        page.on("pageerror", lambda error: self.items.append(f"page error: {error}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, message):
        if message.type == "error" and not any(s in message.text for s in self.expected):
            self.items.append(f"console: {message.text}")

    def _dialog(self, dialog):
        self.items.append(f"dialog: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    page = context.new_page()
    yield page
    context.close()


def _names(page, count: int | None = None) -> list[str]:
    paths = page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.path)")
    return [Path(p).name for p in paths[:count]]


def _wait_for_images(page) -> None:
    """Every <img> shown in the window has loaded (and decoded to a real size)."""
    page.wait_for_function("""() => [...document.images]
        .filter((i) => i.src && i.checkVisibility() && i.getBoundingClientRect().top < window.innerHeight)
        .every((i) => i.complete && i.naturalWidth > 0)""")


def _shot(page, shots: Path, name: str) -> None:
    _wait_for_images(page)
    page.screenshot(path=shots / f"{name}.png")


def _heatmap_pixels(page) -> int:
    """How many of the heatmap canvas's pixels are drawn (alpha > 0)."""
    return page.evaluate("""() => {
        const c = document.getElementById('heatmap');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
        return n;
    }""")


def test_search_explain_more_like_this_and_upload(server, page, shots, photo_root):
    problems = Problems(page)
    page.goto(server)
    search_box = page.locator("#q")
    expect(search_box).to_be_focused()  # autofocus
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#empty")).to_contain_text(f"Searching {PHOTO_COUNT} photos")
    # The start page is the library, newest first, in the order the API gives (its oracle: tests/test_server.py).
    with urllib.request.urlopen(server + "api/browse?k=48", timeout=60) as response:
        library = [Path(item["path"]).name for item in json.load(response)["items"]]
    expect(page.locator("#grid .card")).to_have_count(len(library))
    expect(page.locator("#status")).to_contain_text("Your photos, newest first")
    assert _names(page) == library
    _shot(page, shots, "01-empty")

    # "/" brings the focus back to the search box.
    page.locator("#empty h1").click()
    expect(search_box).not_to_be_focused()
    page.keyboard.press("/")
    expect(search_box).to_be_focused()

    # A text query: the cat photo among the first results, the query in the URL.
    search_box.type("a cat")
    search_box.press("Enter")
    expect(page.locator("#status")).to_contain_text("for “a cat”")
    expect(page).to_have_url(re.compile(r"\?q=a(\+|%20)cat$"))
    top = _names(page, 3)
    assert top[0] in CATS and set(top) <= CATS, f"first three for 'a cat': {top}"
    first = page.locator("#grid .card").first
    expect(first.locator("img")).to_have_attribute("alt", top[0])
    # one number: how likely each photo is to match; the good matches first, then a divider
    expect(first.locator(".scores")).to_contain_text(re.compile(r"^\d+% match"))
    answer = _search_api(server, query="a cat", k=200)
    good = answer["good_matches"]
    assert good and good < len(answer["items"])
    expect(page.locator("#status")).to_contain_text(f"{good} good match")
    expect(page.locator("#grid .divider")).to_have_text("Weaker matches")
    assert page.locator("#grid > li").nth(good).get_attribute("class") == "divider"
    expect(page.locator("#grid .card.weak")).to_have_count(24 - good)
    cat = page.locator("#grid .card", has=page.locator("img[alt='cat.jpg']"))
    expect(cat.locator(".scores")).to_contain_text("+1 copy")  # cat_720p.jpg folded into it
    expect(page.locator("#timings")).to_contain_text(re.compile(r"\d+\.\d ms \(encode .* re-rank .* ms\)"))
    _shot(page, shots, "02-results-a-cat")

    # Load more: the next page follows, nothing twice (24 a page).
    total = len(answer["items"])
    assert total > 24
    page.locator("#load-more").click()
    expect(page.locator("#grid .card")).to_have_count(total)
    expect(page.locator("#load-more")).to_be_hidden()
    ids = page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.id)")
    assert ids == [str(item["id"]) for item in answer["items"]], ids

    # The detail view: path and facts; a word's heatmap appears when the word is clicked.
    first.locator(".thumb").click()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    expect(page.locator("#detail-path")).to_have_text(str(photo_root / top[0]))
    # The sample photos carry no EXIF date: the page says "File date", never "Taken".
    expect(page.locator("#detail-facts")).to_contain_text("File date")
    expect(page.locator("#detail-facts")).not_to_contain_text("Taken")
    heatmap = page.locator("#heatmap")
    expect(heatmap).to_be_hidden()
    cat_chip = page.locator("#words .word", has_text=re.compile(r"^cat$"))
    expect(cat_chip).to_have_count(1)
    _shot(page, shots, "03-detail")
    cat_chip.click()
    expect(heatmap).to_be_visible()
    expect(heatmap).to_have_attribute("data-word", "cat")
    expect(cat_chip).to_have_attribute("aria-pressed", "true")
    assert _heatmap_pixels(page) > 0, "the heatmap canvas is blank"
    box, image_box = heatmap.bounding_box(), page.locator("#detail-img").bounding_box()
    assert box == pytest.approx(image_box, abs=1.5), "the heatmap does not lie over the photo"
    _shot(page, shots, "04-detail-heatmap-cat")

    # Right arrow: the next result, same word; Esc closes.
    page.keyboard.press("ArrowRight")
    expect(page.locator("#detail-path")).to_have_text(str(photo_root / top[1]))
    expect(page.locator("#detail-pos")).to_contain_text("2 of")
    expect(heatmap).to_be_visible()
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#detail-path")).to_have_text(str(photo_root / top[0]))
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    expect(first.locator(".thumb")).to_be_focused()  # back where the person was

    # More like this: the source photo is left out of its results.
    source_id = first.get_attribute("data-id")
    first.locator(".like").click()
    expect(page.locator("#status")).to_contain_text(f"like {top[0]}")
    expect(page).to_have_url(re.compile(rf"\?like={source_id}$"))
    expect(page.locator("#query-photo")).to_be_visible()
    ids = page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.id)")
    assert ids and source_id not in ids, f"more like #{source_id}: {ids}"
    expect(page.locator("#grid .card").first.locator(".scores")).to_contain_text(re.compile(r"^\d+% match"))
    _shot(page, shots, "05-more-like-this")

    # Back: the text query again, from the URL.
    page.go_back()
    expect(page).to_have_url(re.compile(r"\?q=a(\+|%20)cat$"))
    expect(page.locator("#status")).to_contain_text("for “a cat”")
    expect(search_box).to_have_value("a cat")
    assert _names(page, 3) == top
    page.go_forward()
    expect(page.locator("#status")).to_contain_text(f"like {top[0]}")
    # The same "more like this" URL opened afresh (shared, bookmarked) names its source photo.
    page.goto(page.url)
    expect(page.locator("#query-photo-label")).to_have_text(f"Like {top[0]}")

    # Upload a photo: it comes first (the same picture is indexed), with a preview of the query.
    page.set_input_files("#file", str(PHOTOS / "sunflower.jpg"))
    expect(page.locator("#status")).to_contain_text("like sunflower.jpg")
    expect(page.locator("#grid .card").first).to_have_attribute("data-path", str(photo_root / "sunflower.jpg"))
    preview = page.locator("#query-photo-img")
    expect(preview).to_be_visible()
    expect(preview).to_have_attribute("src", re.compile(r"^blob:"))
    _shot(page, shots, "06-upload-sunflower")

    # Drag and drop a photo onto the page: the drop zone shows while dragging, then the search runs.
    dropped = page.evaluate_handle(
        """([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        return transfer;
    }""",
        [base64.b64encode((PHOTOS / "owl.jpg").read_bytes()).decode(), "owl.jpg"],
    )
    page.dispatch_event("#grid", "dragenter", {"dataTransfer": dropped})
    expect(page.locator("#drop")).to_be_visible()
    _shot(page, shots, "07-dragging-owl")
    page.dispatch_event("#grid", "drop", {"dataTransfer": dropped})
    expect(page.locator("#drop")).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("like owl.jpg")
    expect(page.locator("#grid .card").first).to_have_attribute("data-path", str(photo_root / "owl.jpg"))

    # An upload that is not an image: the API's own message is shown.
    status, api_detail = _api_error(server, b"not a photo")
    problems.expected.append(f"status of {status}")  # the browser logs the failed request
    page.set_input_files("#file", files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not a photo"}])
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_have_text(f"Could not search with notes.jpg: {api_detail}")
    _shot(page, shots, "08-error-not-an-image")

    # A narrow window: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 800})
    search_box.fill("a dog running in the water")
    search_box.press("Enter")
    expect(page.locator("#status")).to_contain_text("for “a dog running in the water”")
    expect(page.locator("#error")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    _shot(page, shots, "09-narrow-results")
    page.locator("#grid .card .thumb").first.click()
    page.locator("#words .word", has_text=re.compile(r"^water$")).click()
    expect(page.locator("#heatmap")).to_be_visible()
    _shot(page, shots, "10-narrow-detail-heatmap-water")
    assert not problems.items, problems.items


def _search_api(base: str, **fields) -> dict:
    """POST /api/search with JSON `fields`: the answer the page renders (its oracle)."""
    request = urllib.request.Request(
        base + "api/search", data=json.dumps(fields).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def _api_error(base: str, data: bytes) -> tuple[int, str]:
    """The status and `detail` the API gives for an upload of these bytes (an oracle for the page's message)."""
    boundary = "imgsearchtestboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="notes.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        base + "api/search",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert 400 <= caught.value.code < 500
    return caught.value.code, json.load(caught.value)["detail"]


def test_shared_url_with_a_folder_filter_shows_markup_as_text(server, page, shots, photo_root):
    problems = Problems(page)
    folder = photo_root / MARKUP_FOLDER
    odd = folder / MARKUP_NAME
    query = urllib.parse.urlencode({"q": "a dog", "folder": str(folder)})
    page.goto(f"{server}?{query}")  # a shared link runs its search
    expect(page.locator("#status")).to_contain_text("for “a dog”")
    expect(page.locator("#folder")).to_have_value(str(folder))
    expect(page.locator("#filters")).to_have_attribute("open", "")
    cards = page.locator("#grid .card")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-path", str(odd))
    expect(cards.first.locator(".name")).to_have_text(f"{MARKUP_NAME} in b>")
    cards.first.locator(".thumb").click()
    expect(page.locator("#detail-path")).to_have_text(str(odd))
    _shot(page, shots, "11-markup-in-path")
    # Shown as text: none of it became an element, and nothing ran.
    assert page.locator("main b, dialog b").count() == 0
    assert page.locator("img[src='x']").count() == 0

    # A date filter that leaves nothing: the page says so and what to do; clearing brings results back.
    page.keyboard.press("Escape")
    later = (datetime.date.today() + datetime.timedelta(days=2)).isoformat()
    page.locator("#after").fill(later)
    page.locator("#after").press("Enter")
    expect(page.locator("#status")).to_have_text(
        "No photos for “a dog”. Try removing a filter (folder, dates, match %)."
    )
    expect(page).to_have_url(re.compile(rf"[?&]after={later}(&|$)"))
    expect(page.locator("#grid .card")).to_have_count(0)
    _shot(page, shots, "12-no-results")
    page.locator("#filters-clear").click()
    expect(page.locator("#grid .card")).to_have_count(24)
    expect(page).to_have_url(re.compile(r"\?q=a(\+|%20)dog$"))
    expect(page.locator("#warning")).to_be_hidden()

    # "Match at least 50%": the good matches alone, as the API gives them with min_score 0.5.
    page.locator("#q").fill("a cat")
    page.locator("#q").press("Enter")
    expect(page.locator("#status")).to_contain_text("for “a cat”")
    good = _search_api(server, query="a cat", min_score=0.5)["items"]
    assert good
    if page.locator("#filters").get_attribute("open") is None:
        page.locator("#filters summary").click()
    page.locator("#min").fill("50")
    page.locator("#min").press("Enter")
    expect(page).to_have_url(re.compile(r"[?&]min=50(&|$)"))
    expect(page.locator("#grid .card")).to_have_count(len(good))
    assert page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.id)") == [
        str(item["id"]) for item in good
    ]
    expect(page.locator("#grid .card.weak")).to_have_count(0)
    page.locator("#filters-clear").click()
    expect(page).to_have_url(re.compile(r"\?q=a(\+|%20)cat$"))

    # A query that is not English: the results come, with a warning above them; English again hides it.
    page.locator("#q").fill("un chien qui court sur la plage")
    page.locator("#q").press("Enter")
    expect(page.locator("#warning")).to_be_visible()
    expect(page.locator("#warning")).to_contain_text("The text encoder reads English")
    expect(page.locator("#grid .card").first).to_be_visible()
    _shot(page, shots, "13-not-english")
    page.locator("#q").fill("a dog")
    page.locator("#q").press("Enter")
    expect(page.locator("#warning")).to_be_hidden()
    assert not problems.items, problems.items


# A one-finger horizontal swipe of dx pixels across the photo, as touch events (Touch objects).
SWIPE = """(dx) => {
  const target = document.querySelector(".detail-figure");
  const box = target.getBoundingClientRect();
  const y = box.top + box.height / 2, x0 = box.left + box.width / 2 - dx / 2;
  const touch = (x) => new Touch({ identifier: 1, target, clientX: x, clientY: y });
  const start = { touches: [touch(x0)], changedTouches: [touch(x0)], bubbles: true };
  target.dispatchEvent(new TouchEvent("touchstart", start));
  target.dispatchEvent(new TouchEvent("touchend", { touches: [], changedTouches: [touch(x0 + dx)], bubbles: true }));
}"""


def test_a_phone_sees_a_grid_of_photos_without_desktop_hints(server, browser, shots):
    """At 390x844 on a touch screen: three columns of cards that are mostly photo, no keyboard,
    drag-and-drop or "click" hints, the filters panel closes after Apply, while a search runs
    the results it will replace are dimmed; in a photo's view, swipes move between photos, the
    controls stay on screen, and Back closes the photo and keeps the search."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    page = context.new_page()
    problems = Problems(page)
    try:
        page.goto(server)
        assert page.evaluate("document.documentElement.classList.contains('touch')")
        for hint in page.locator(".desktop-only").all():
            expect(hint).to_be_hidden()
        shown = page.locator("#empty").inner_text()  # rendered text: what hidden elements hold is left out
        assert "Press /" not in shown and "drop a photo" not in shown and "Search with a photo" in shown
        page.locator("#q").fill("a dog")
        page.locator("#q").press("Enter")
        expect(page.locator("#grid .card")).to_have_count(24)
        boxes = page.locator("#grid .card").evaluate_all(
            "cards => cards.map(c => [c.getBoundingClientRect().left, c.getBoundingClientRect().height,"
            " c.querySelector('.thumb').getBoundingClientRect().height])"
        )
        first_row = [left for left, _, _ in boxes if abs(boxes[0][1]) > 0][:6]
        columns = len({round(left) for left in first_row[:6] if left < 390})
        assert columns >= 3, boxes[:6]
        assert all(thumb / card >= 0.7 for _, card, thumb in boxes), boxes[:6]  # mostly photo
        assert page.locator("#grid .card .label").count() == 0  # no ImageNet labels on cards
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        _shot(page, shots, "14-phone-grid")

        # The filters: open, apply, and the panel closes.
        page.locator("#filters summary").click()
        expect(page.locator("#folder")).to_be_visible()
        page.locator("#filters button[type=submit]").click()
        expect(page.locator("#folder")).to_be_hidden()
        assert page.evaluate("document.getElementById('filters').open") is False

        # A search under way dims the old results until its answer comes. The request is held
        # (the sync API runs a route handler on this thread, so the handler must not block: it
        # keeps the route, and this thread lets it go once the dimmed page is checked).
        held: list = []
        page.route("**/api/search", lambda route: held.append(route))
        page.locator("#q").fill("a cat")
        page.locator("#q").press("Enter")
        page.wait_for_function("() => document.body.classList.contains('busy')")
        assert float(page.evaluate("getComputedStyle(document.getElementById('grid')).opacity")) < 0.6
        _shot(page, shots, "15-phone-searching")
        deadline = time.monotonic() + WAIT_MS / 1000
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(10)  # lets playwright call the handler
        assert held, "the search request never reached the route"
        held[0].continue_()
        page.wait_for_function("() => !document.body.classList.contains('busy')")
        page.wait_for_function("() => getComputedStyle(document.getElementById('grid')).opacity === '1'")
        page.unroute("**/api/search")

        # The photo's view says "tap", not "click".
        page.locator("#grid .card .thumb").first.click()
        expect(page.locator("#explain")).to_be_visible()
        expect(page.locator("#explain")).to_contain_text("a word to see where")
        explain = page.locator("#explain").inner_text()
        assert "Tap a word" in explain and "Click" not in explain

        # Swipe left: the next photo; swipe right: back to the first.
        position = page.locator("#detail-pos")
        expect(position).to_have_text(re.compile(r"^1 of "))
        for dx, expected in ((-120, r"^2 of "), (120, r"^1 of ")):
            page.evaluate(SWIPE, dx)
            expect(position).to_have_text(re.compile(expected))

        # The arrows and the close button stay on screen when the view scrolls to its end.
        page.evaluate("() => { const b = document.querySelector('.detail-body'); b.scrollTop = b.scrollHeight; }")
        for control in ("#prev", "#next", "#close"):
            box = page.locator(control).bounding_box()
            assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 844, (control, box)

        # Back closes the photo and keeps the search; Back again is the search before it.
        url = page.url
        page.go_back()
        expect(page.locator("#detail")).to_be_hidden()
        assert page.url == url
        expect(page.locator("#grid .card")).to_have_count(24)
        page.locator("#grid .card .thumb").nth(1).click()
        expect(page.locator("#detail")).to_be_visible()
        page.locator("#close").click()  # closed on the page: its history entry goes with it
        expect(page.locator("#detail")).to_be_hidden()
        page.wait_for_function("() => !(history.state && history.state.detail)")
        assert page.url == url
        page.go_back()
        expect(page).to_have_url(re.compile(r"\?q=a(\+|%20)dog"))
        expect(page.locator("#status")).to_contain_text("for “a dog”")
        assert not problems.items, problems.items
    finally:
        context.close()


def test_the_page_and_the_api_docs_link_to_each_other(server, page):
    page.goto(server)
    page.locator("#api-docs").click()
    expect(page).to_have_url(re.compile(r"/docs$"))
    back = page.get_by_role("link", name="back to the photos")  # Swagger UI may open it in a new tab
    page.goto(urllib.parse.urljoin(page.url, back.get_attribute("href")))
    expect(page).to_have_url(server)
    expect(page.locator("#q")).to_be_visible()
