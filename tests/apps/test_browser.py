"""A real browser on the page: headless Debian Chromium opens it on loopback and names a photo.

Skipped, with the reason, where /usr/bin/chromium or the playwright package is absent;
`.ci/run` installs Chromium so CI runs it. Playwright never downloads a browser here.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

import flowerid
from flowerid.apps.listen import background_server
from flowerid.apps.server import ServeConfig, create_app
from flowerid.model.checkpoint import load_checkpoint, save_checkpoint

from ..conftest import CLASS_COLOURS, make_photo

CHROMIUM = Path(os.environ.get("FLOWERID_CHROMIUM", "/usr/bin/chromium"))  # Debian's; never a downloaded one
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
]

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[dev]')"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: apt-get install chromium to run the browser test"
)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def site(trained):
    app = create_app(flowerid.load(trained[1].checkpoint_path), ServeConfig(max_upload_bytes=2 * 1024 * 1024))
    with background_server(app) as url:
        yield url


@pytest.fixture
def phone(browser, site):
    """A page at phone size (iPhone 12/13/14 viewport) that records every request it makes."""
    ctx = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = ctx.new_page()
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(site)
    yield page
    ctx.close()


def _answer(page) -> str:
    page.wait_for_selector("#result:not([hidden]), #error:not([hidden])", timeout=20_000)
    return page.inner_text("#answer").lower() if page.is_visible("#result") else "error: " + page.inner_text("#error")


def test_the_page_names_the_flower_in_a_photo(phone, tmp_path):
    photo = tmp_path / "thistle.jpg"
    make_photo(CLASS_COLOURS["10"], 4242, size=(300, 240)).save(photo, quality=90)
    assert phone.is_visible("#camera-btn") and phone.get_attribute("#camera", "capture") == "environment"

    phone.set_input_files("#camera", str(photo))
    assert "globe thistle" in _answer(phone)
    rows = phone.locator("#top li")
    assert rows.count() == 3  # the tiny model knows three flowers
    assert "globe thistle" in rows.first.inner_text().lower()
    assert phone.is_visible("#preview")
    phone.screenshot(path=str(tmp_path / "phone.png"))
    # Nothing but our own server was asked for anything: the page works offline.
    hosts = {urlparse(u).hostname for u in phone.requests if not u.startswith(("blob:", "data:"))}
    assert hosts == {"127.0.0.1"}, hosts

    # A second photo replaces the first answer.
    photo2 = tmp_path / "primrose.png"
    make_photo(CLASS_COLOURS["1"], 77, size=(200, 200)).save(photo2)
    phone.set_input_files("#picker", str(photo2))
    phone.wait_for_function("document.querySelector('#answer').textContent.toLowerCase().includes('primrose')")


def test_the_page_says_plainly_when_it_is_not_an_image(phone, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("shopping list: milk, eggs")
    phone.set_input_files("#camera", str(notes))
    assert _answer(phone).startswith("error: ") and "not an image" in phone.inner_text("#error")
    assert not phone.is_visible("#result")


def test_the_page_refuses_a_too_large_photo_before_sending_it(phone, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + bytes(3 * 1024 * 1024))
    before = len([u for u in phone.requests if u.endswith("predict?top_k=5")])
    phone.set_input_files("#picker", str(big))
    assert "at most 2 MB" in _answer(phone)
    assert len([u for u in phone.requests if u.endswith("predict?top_k=5")]) == before


@contextlib.contextmanager
def _phone_page(browser, trained, config: ServeConfig, checkpoint=None):
    """A phone-sized page on a server of the trained model (or `checkpoint`), closed afterwards."""
    clf = flowerid.load(checkpoint or trained[1].checkpoint_path)
    with background_server(create_app(clf, config)) as url:
        page = browser.new_page(viewport={"width": 390, "height": 844})
        try:
            page.goto(url)
            yield page
        finally:
            page.close()


def test_a_model_of_other_things_is_not_made_to_talk_of_flowers(browser, trained, tmp_path):
    """Served from cats and dogs (or anything), the page asks "What is this?", not "Which flower"."""
    ckpt = load_checkpoint(trained[1].checkpoint_path)
    ckpt["names"] = ["cat", "dog", "rabbit"]
    pets = save_checkpoint(ckpt, tmp_path / "pets.pth")
    blank = tmp_path / "wall.png"
    Image.new("RGB", (300, 240), (250, 250, 250)).save(blank)
    with _phone_page(browser, trained, ServeConfig(), checkpoint=pets) as page:
        page.wait_for_function("document.querySelector('#ask').textContent === 'What is this?'")
        assert not re.search(r"flower(?!id)", page.inner_text("main").lower())  # the product's name may stay
        assert page.title() == "flowerid: name what is in the photo"
        assert "Knows 3 categories" in page.inner_text("#about")
        page.set_input_files("#camera", str(blank))
        assert _answer(page) == "not something i know"
        assert "does not look like anything I know" in page.inner_text("#unknown")
        assert not re.search(r"flower(?!id)", page.inner_text("main").lower())


def test_the_page_says_when_the_model_is_unsure(browser, trained, tmp_path):
    photo = tmp_path / "thistle.png"
    make_photo(CLASS_COLOURS["10"], 5).save(photo)  # a flower it knows (thistles sit far inside the threshold)
    with _phone_page(browser, trained, ServeConfig(unsure_below=1.0)) as page:
        page.set_input_files("#camera", str(photo))
        assert _answer(page).startswith("maybe ")
        assert page.is_visible("#unsure") and "Not sure" in page.inner_text("#unsure")


def test_the_page_says_when_a_photo_is_not_a_flower_it_knows(browser, trained, tmp_path):
    """ "Not a flower I know" is its own state, apart from "unsure between flowers I know"."""
    blank = tmp_path / "wall.png"
    Image.new("RGB", (300, 240), (250, 250, 250)).save(blank)
    thistle = tmp_path / "thistle.png"
    make_photo(CLASS_COLOURS["10"], 4242, size=(300, 240)).save(thistle)
    with _phone_page(browser, trained, ServeConfig(unsure_below=1.0)) as page:
        page.set_input_files("#camera", str(blank))
        assert _answer(page) == "not a flower i know"
        assert page.is_visible("#unknown") and not page.is_visible("#unsure")
        assert "does not look like a flower I know" in page.inner_text("#unknown")
        assert page.locator("#top li").count() == 3  # the closest ones are still listed
        page.set_input_files("#picker", str(thistle))  # then a flower it knows: unsure, not unknown
        page.wait_for_function("document.querySelector('#answer').textContent.startsWith('Maybe ')")
        assert page.is_visible("#unsure") and not page.is_visible("#unknown")


def test_the_answer_card_shows_why_over_the_photo_on_a_phone(phone, tmp_path):
    photo = tmp_path / "thistle.jpg"
    make_photo(CLASS_COLOURS["10"], 99, size=(600, 800)).save(photo, quality=90)  # a portrait photo
    phone.set_input_files("#picker", str(photo))
    assert "globe thistle" in _answer(phone)
    assert phone.is_visible("#why") and not phone.is_visible("#why-view")
    assert not [u for u in phone.requests if "explain=1" in u]  # the answer alone costs no explanation

    phone.click("#why")
    phone.wait_for_selector("#why-map[data-drawn]", timeout=20_000)
    assert phone.get_attribute("#why", "aria-pressed") == "true"
    assert "globe thistle" in phone.inner_text("#why-caption").lower()
    assert [u for u in phone.requests if u.endswith("predict?top_k=5&explain=1")]
    # The map lies over the photo, both inside the phone's width, and something was drawn on it.
    photo_box = phone.locator("#why-photo").bounding_box()
    map_box = phone.locator("#why-map").bounding_box()
    for key in ("x", "y", "width", "height"):
        assert abs(photo_box[key] - map_box[key]) < 1.5, (photo_box, map_box)
    assert photo_box["x"] >= 0 and photo_box["x"] + photo_box["width"] <= 390
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    painted = phone.evaluate(
        "(() => { const c = document.querySelector('#why-map');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n / (c.width * c.height); })()"
    )
    assert painted > 0.9, painted
    phone.screenshot(path=str(tmp_path / "why.png"))

    phone.click("#why")  # and away again
    assert not phone.is_visible("#why-view") and phone.get_attribute("#why", "aria-pressed") == "false"


def test_not_right_tell_me_what_it_is(browser, trained, tmp_path):
    """Under an answer, the user picks the right category or types a new name; the photo lands in the folder."""
    fixes = tmp_path / "fixes"
    photo = tmp_path / "mystery.png"
    make_photo((220, 220, 30), 3, size=(200, 200)).save(photo)
    with _phone_page(browser, trained, ServeConfig(corrections=str(fixes))) as page:
        page.set_input_files("#camera", str(photo))
        _answer(page)
        assert page.is_visible("#fix-open") and "Not right?" in page.inner_text("#fix-open")
        assert "kept only when you correct" in page.inner_text("#about")
        page.click("#fix-open")
        assert page.is_visible("#fix")
        labels = page.locator("#fix-pick option").all_inner_texts()
        assert "globe thistle" in labels and len(labels) == 4  # the prompt and the three flowers
        page.fill("#fix-name", "sun\u202eflower")  # refused by the server: said under the form, answer kept
        page.click("#fix-send")
        page.wait_for_selector("#fix-error:not([hidden])", timeout=20_000)
        assert page.is_visible("#result") and page.is_visible("#fix") and not page.is_visible("#error")
        page.fill("#fix-name", "Sunflower")
        page.click("#fix-send")
        page.wait_for_selector("#fix-done:not([hidden])", timeout=20_000)
        assert "saved as Sunflower" in page.inner_text("#fix-done") and not page.is_visible("#fix")
        assert not page.is_visible("#fix-error")
        assert [p.read_bytes() for p in (fixes / "sunflower").iterdir()] == [photo.read_bytes()]

        # A second photo: pick an existing flower from the list instead.
        page.set_input_files("#picker", str(photo))
        page.wait_for_selector("#fix-open:not([hidden])", timeout=20_000)
        page.click("#fix-open")
        page.select_option("#fix-pick", label="globe thistle")
        page.click("#fix-send")
        page.wait_for_selector("#fix-done:not([hidden])", timeout=20_000)
        assert len(list((fixes / "10").iterdir())) == 1


def test_no_correction_button_unless_the_server_keeps_them(phone, tmp_path):
    photo = tmp_path / "thistle.png"
    make_photo(CLASS_COLOURS["10"], 6).save(photo)
    phone.set_input_files("#camera", str(photo))
    _answer(phone)
    assert not phone.is_visible("#fix-open") and "photos are not stored" in phone.inner_text("#about")


TOKEN = "browser-token-0123456789abcdef"


def test_the_page_works_through_the_token_link(browser, trained, tmp_path):
    """The printed link sets the cookie and lands on the clean address; the page then names photos."""
    photo = tmp_path / "thistle.jpg"
    make_photo(CLASS_COLOURS["10"], 4242, size=(300, 240)).save(photo, quality=90)
    app = create_app(flowerid.load(trained[1].checkpoint_path), ServeConfig(token=TOKEN))
    with background_server(app) as url:
        ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        try:
            page = ctx.new_page()
            page.goto(url + "?token=" + TOKEN)
            assert page.url == url, "the token must not stay in the address bar or the history"
            [cookie] = ctx.cookies()
            assert cookie["value"] == TOKEN and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == "", "the page's scripts must not read the token"
            page.set_input_files("#camera", str(photo))
            assert "globe thistle" in _answer(page)
        finally:
            ctx.close()


def test_the_page_says_how_to_get_in_without_the_token(browser, trained, tmp_path):
    app = create_app(flowerid.load(trained[1].checkpoint_path), ServeConfig(token=TOKEN))
    with background_server(app) as url:
        page = browser.new_page(viewport={"width": 390, "height": 844})
        try:
            page.goto(url + "?token=not-the-right-token-at-all")
            page.wait_for_selector("#error:not([hidden])", timeout=20_000)  # said at once, before any photo
            assert "needs its token" in page.inner_text("#error") and "?token=" in page.inner_text("#error")
        finally:
            page.close()
