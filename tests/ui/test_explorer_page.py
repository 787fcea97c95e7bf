"""The explorer's page in headless Chromium (Debian's, through Playwright) against `deepvis ui`
over a real server on the default model.

Every test records the page's requests, console errors and horizontal scroll: none may go
anywhere but the gateway on 127.0.0.1, none may log an error, and nothing may be wider than
the window. The pictures the page draws are checked against deepvis.render's for the arrays
the page itself offers for download.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

import deepvis
from deepvis import render

READY = (
    "document.body.dataset.ready === 'yes' && document.body.dataset.pending === '0' && "
    "document.querySelectorAll('#grid .card').length > 0 && "
    "[...document.querySelectorAll('#grid .card')].every(c => c.dataset.state !== 'loading') && "
    "document.querySelector('[data-card=layer-grad_cam]') !== null"
)
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"


def wait_ready(page: Any) -> None:
    """Waits until every card and the layer view are drawn and no request is in flight."""
    page.wait_for_function(READY, timeout=60_000)


class Watched:
    """A page with what it did: requests, requests elsewhere, console errors."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.requests: list[str] = []
        self.elsewhere: list[str] = []
        self.errors: list[str] = []
        page.route("**/*", self._route)
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or f"{parts.scheme}://{parts.netloc}" == self.origin:
            self.requests.append(url)
            route.continue_()
        else:
            self.elsewhere.append(url)
            route.abort()

    def wait_ready(self) -> None:
        wait_ready(self.page)

    def check(self) -> None:
        """Nothing left 127.0.0.1, nothing was logged as an error, nothing scrolls sideways."""
        assert self.elsewhere == []
        assert self.errors == []
        assert all(urlsplit(u).hostname in (None, "127.0.0.1") for u in self.requests)
        scroll, client = self.page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert scroll <= client, (scroll, client)


@pytest.fixture
def open_page(browser: Any, explorer: Any) -> Iterator[Callable[..., Watched]]:
    pages: list[Any] = []
    origin = explorer.url.rstrip("/")

    def open_(fragment: str = "", width: int = 1280, height: int = 800) -> Watched:
        page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
        pages.append(page)
        watched = Watched(page, origin)
        page.goto(explorer.url + fragment)
        page.wait_for_function("document.body.dataset.ready === 'yes'", timeout=30_000)
        return watched

    yield open_
    for page in pages:
        page.close()


def upload(w: Watched, path: Path) -> None:
    w.page.set_input_files("#file", str(path))
    w.page.wait_for_function(
        f"document.querySelector('#source-name').textContent.startsWith({path.name!r})"
    )
    w.wait_ready()


def picture(w: Watched, selector: str) -> np.ndarray:
    """The pixels the page drew for an <img>: its PNG data URI, decoded here."""
    src = w.page.get_attribute(selector, "src")
    assert src and src.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
        return np.asarray(img.convert("RGB"))


def downloaded_array(w: Watched, card: str, tmp_path: Path) -> np.ndarray:
    """The raw array of a card, from the page's NPY download."""
    with w.page.expect_download() as info:
        w.page.click(f"[data-card={card}] .downloads a:text('NPY')")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    return np.load(path)


def shown_maps(w: Watched) -> list[tuple[str, bool, int]]:
    return w.page.evaluate(
        "[...document.querySelectorAll('#grid img.map')]"
        ".map(i => [i.dataset.method, i.complete, i.naturalWidth])"
    )


def expected(
    method: str,
    arrays: dict[str, np.ndarray],
    source: Image.Image,
    *,
    scale: str = "shared",
    cmap: str | None = None,
    alpha: float = render.DEFAULT_ALPHA,
    overlay: bool | None = None,
    sign: str | None = None,
) -> np.ndarray:
    """What deepvis.render draws for the card of `method`, with the page's settings."""
    own = {}
    for m, a in arrays.items():
        mp = render.map_of(m, a, sign)
        own[m] = render.scale_of(mp.values, signed=mp.signed, cmap=cmap)
    if scale == "shared":
        family = [s for s in own.values() if s.signed == own[method].signed]
        chosen = render.shared_scale(family).with_cmap(own[method].cmap)
    else:
        chosen = own[method]
    opts = render.Options(scale=chosen, alpha=alpha, overlay=overlay, sign=sign)
    return np.asarray(render.draw(method, arrays[method], opts, image=source).image)


METHODS = ("guided_backprop", "grad_cam", "saliency")


def test_an_uploaded_digit_shows_its_predictions_and_three_method_pictures(
    open_page: Callable[..., Watched], sample_paths: list[Path], digits_server: Any
) -> None:
    w = open_page()
    events: list[tuple[str, str]] = []
    w.page.on("request", lambda r: events.append(("sent", r.url)))
    w.page.on("requestfinished", lambda r: events.append(("done", r.url)))
    upload(w, sample_paths[3])
    # The methods' requests go out together (so that the server can batch them): all three
    # are sent before the first one is answered.
    explains = [(kind, url) for kind, url in events if "/api/explain?" in url]
    first_done = next(i for i, (kind, _) in enumerate(explains) if kind == "done")
    sent_before = {url for kind, url in explains[:first_done] if kind == "sent"}
    assert {f"method={m}" for m in METHODS} <= {u.split("&")[1] for u in sent_before}, explains
    maps = shown_maps(w)
    assert [m for m, _, _ in maps] == list(METHODS)
    assert all(done and width > 0 for _, done, width in maps), maps
    chips = w.page.evaluate(
        "[...document.querySelectorAll('#chips .chip')].map(c => [c.dataset.index, "
        "c.getAttribute('aria-pressed')])"
    )
    # The oracle: the model's own top-5 for the file, through the Python client.
    with deepvis.Client(digits_server.bound_address) as client:
        top = client.explain(str(sample_paths[3]), method="saliency").predictions
    assert [int(i) for i, _ in chips] == [p.index for p in top]
    assert [pressed for _, pressed in chips] == ["true"] + ["false"] * 4
    assert w.page.text_content("#target").startswith(f"target: class {top[0].index} (p=")
    w.check()


def test_the_page_draws_what_deepvis_render_draws_and_redraws_without_a_request(
    open_page: Callable[..., Watched], sample_paths: list[Path], tmp_path: Path, digits_server: Any
) -> None:
    w = open_page()
    upload(w, sample_paths[5])
    arrays = {m: downloaded_array(w, m, tmp_path) for m in METHODS}
    # The arrays the page holds are the server's results (independently: the Python client).
    with deepvis.Client(digits_server.bound_address) as client:
        for m in METHODS:
            direct = client.explain(str(sample_paths[5]), method=m, render=False).array
            assert direct is not None
            np.testing.assert_allclose(arrays[m], direct, rtol=1e-4, atol=1e-6)
    source = Image.open(sample_paths[5])
    for m in METHODS:
        np.testing.assert_array_equal(
            picture(w, f"[data-card={m}] img.map"), expected(m, arrays, source)
        )
    before = len(w.requests)

    # Opacity: the overlay's pixels change, as render draws them at the new alpha.
    cam_before = picture(w, "[data-card=grad_cam] img.map")
    w.page.focus("#alpha")
    for _ in range(30):
        w.page.keyboard.press("ArrowRight")
    assert w.page.input_value("#alpha") == "0.8"
    cam_after = picture(w, "[data-card=grad_cam] img.map")
    assert (cam_after != cam_before).any()
    np.testing.assert_array_equal(cam_after, expected("grad_cam", arrays, source, alpha=0.8))

    # Colormap and per-map scale: drawn again in the page, still as render draws them.
    w.page.select_option("#cmap", "viridis")
    w.page.check("input[name=scale][value=own]")
    for m in METHODS:
        np.testing.assert_array_equal(
            picture(w, f"[data-card={m}] img.map"),
            expected(m, arrays, source, scale="own", cmap="viridis", alpha=0.8),
        )
    # Sign: guided backprop drawn as |a|, on the unsigned family's shared scale.
    w.page.check("input[name=scale][value=shared]")
    w.page.select_option("#sign", "unsigned")
    for m in METHODS:
        np.testing.assert_array_equal(
            picture(w, f"[data-card={m}] img.map"),
            expected(m, arrays, source, cmap="viridis", alpha=0.8, sign="unsigned"),
        )
    w.page.select_option("#sign", "auto")
    # Hovering shows the raw value of the map under the pointer.
    hovered = w.page.locator("[data-card=saliency] img.map")
    box = hovered.bounding_box()
    assert box is not None
    x, y = 20, 9  # a map pixel; the pointer goes to its centre
    position = {"x": (x + 0.5) * box["width"] / 32, "y": (y + 0.5) * box["height"] / 32}
    hovered.hover(position=position)
    value = float(w.page.get_attribute("[data-card=saliency] .hover", "data-value") or "nan")
    assert value == pytest.approx(float(render.map_of("saliency", arrays["saliency"]).values[y, x]))
    assert len(w.requests) == before  # none of this asked the gateway for anything
    w.check()


def test_a_prediction_chip_retargets_every_view_and_reloading_restores_it(
    open_page: Callable[..., Watched], sample_paths: list[Path]
) -> None:
    w = open_page("#sample=digit_3.png")
    w.wait_ready()
    target_before = w.page.text_content("#target")
    pictures_before = {m: picture(w, f"[data-card={m}] img.map") for m in METHODS}
    second = w.page.get_attribute("#chips .chip:nth-child(2)", "data-index")
    w.page.click("#chips .chip:nth-child(2)")
    w.page.wait_for_function("location.hash.includes('target=')")
    w.wait_ready()
    assert w.page.text_content("#target") != target_before
    assert w.page.text_content("#target").startswith(f"target: class {second} (p=")
    assert w.page.get_attribute(f"#chips .chip[data-index='{second}']", "aria-pressed") == "true"
    titles = w.page.eval_on_selector_all("#grid h3", "hs => hs.map(h => h.textContent)")
    assert all(f"class {second}" in t for t in titles), titles
    for m in METHODS:
        assert (picture(w, f"[data-card={m}] img.map") != pictures_before[m]).any(), m
    assert f"class {second}" in (w.page.text_content("[data-card=layer-grad_cam] h3") or "")

    # The view, with more settings changed, survives a reload of its URL.
    w.page.check("#methods input[value=deconvolution]")
    w.wait_ready()
    w.page.select_option("#cmap", "magma")
    w.page.select_option("#layer", "conv2")
    w.wait_ready()
    w.page.select_option("#topk", "8")
    w.wait_ready()
    assert w.page.locator("#fmaps button").count() == 8
    url = w.page.url
    view = {
        "target": w.page.text_content("#target"),
        "titles": w.page.eval_on_selector_all("#grid h3", "hs => hs.map(h => h.textContent)"),
        "layer": w.page.input_value("#layer"),
        "cmap": w.page.input_value("#cmap"),
        "maps": {m: picture(w, f"[data-card={m}] img.map") for m in (*METHODS, "deconvolution")},
    }
    w.page.reload()
    w.page.wait_for_function("document.body.dataset.ready === 'yes'")
    w.wait_ready()
    assert w.page.url == url
    assert w.page.text_content("#target") == view["target"]
    assert (
        w.page.eval_on_selector_all("#grid h3", "hs => hs.map(h => h.textContent)")
        == view["titles"]
    )
    assert w.page.input_value("#layer") == view["layer"] == "conv2"
    assert w.page.input_value("#cmap") == view["cmap"] == "magma"
    assert w.page.locator("#fmaps button").count() == 8
    for m, pixels in view["maps"].items():
        np.testing.assert_array_equal(picture(w, f"[data-card={m}] img.map"), pixels)
    w.check()


def _render_jobs(server: Any) -> int:
    return sum(v.active_jobs for v in server.engine.visualizers.values())


def test_a_channels_feature_visualization_streams_and_a_cancelled_one_ends_on_the_server(
    open_page: Callable[..., Watched], digits_server: Any, tmp_path: Path
) -> None:
    w = open_page("#sample=digit_7.png")
    w.wait_ready()
    w.page.fill("#fv-steps", "48")
    tile = w.page.locator("#fmaps button").first
    channel = tile.get_attribute("data-channel")
    tile.click()
    w.page.wait_for_function(
        "document.querySelector('#fv-status').dataset.state === 'done'", timeout=120_000
    )
    assert int(w.page.get_attribute("#fv-status", "data-frames") or 0) >= 2
    assert w.page.text_content("#fv-title") == f"conv3:{channel}"
    assert w.page.evaluate(
        "(() => { const i = document.querySelector('#fv-image'); "
        "return i.complete && i.naturalWidth > 0 && !i.hidden; })()"
    )
    # Beside it: the channel's attribution on the current image.
    assert w.page.locator("[data-card=fv-attribution] img.map").count() == 1
    with w.page.expect_download() as info:
        w.page.click("#fv-downloads a:text('NPY')")
    info.value.save_as(tmp_path / "fv.npy")
    assert np.load(tmp_path / "fv.npy").shape == (1, 1, 32, 32)
    assert _render_jobs(digits_server) == 0
    # The channel as the target of every picture.
    w.page.click("#fv-target")
    w.page.wait_for_function(f"location.hash.includes('target=conv3%3A{channel}')")
    w.wait_ready()
    assert w.page.text_content("#target").startswith(f"target: neuron conv3:{channel}")
    titles = w.page.eval_on_selector_all("#grid h3", "hs => hs.map(h => h.textContent)")
    assert len(titles) == 3 and all(f"neuron conv3:{channel}" in t for t in titles), titles

    # A second, long one: cancelled after its first frame, its job ends on the server.
    w.page.fill("#fv-steps", "4096")
    w.page.click("#fv-start")
    w.page.wait_for_function(
        "Number(document.querySelector('#fv-status').dataset.frames) >= 1", timeout=60_000
    )
    assert _render_jobs(digits_server) == 1
    w.page.click("#fv-cancel")
    w.page.wait_for_function("document.querySelector('#fv-status').dataset.state === 'cancelled'")
    deadline = time.monotonic() + 15
    while _render_jobs(digits_server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _render_jobs(digits_server) == 0
    assert w.page.evaluate("fetch('api/jobs').then(r => r.json())") == {"running": 0}
    w.check()


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_the_page_reads_at_desktop_and_phone_sizes(
    open_page: Callable[..., Watched], width: int, height: int, tmp_path: Path
) -> None:
    w = open_page("#sample=digit_3.png", width, height)
    w.wait_ready()
    w.page.fill("#fv-steps", "32")
    w.page.locator("#fmaps button").nth(1).click()
    w.page.wait_for_function(
        "document.querySelector('#fv-status').dataset.state === 'done'", timeout=120_000
    )
    images = w.page.evaluate(
        "[...document.images].filter(i => !i.hidden).map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    assert images and all(done and n > 0 and alt for done, n, alt in images), images
    w.check()
    shot = tmp_path / f"explorer-{width}.png"
    w.page.evaluate("window.scrollTo(0, 0)")
    w.page.screenshot(path=str(shot))
    # DEEPVIS_SCREENSHOTS=1 refreshes the README's picture from this run.
    if width == 1280 and os.environ.get("DEEPVIS_SCREENSHOTS") == "1":
        shutil.copyfile(shot, SCREENSHOTS / "explorer.png")


def test_the_page_works_behind_a_proxy_path(
    browser: Any, explorer: Any, sample_paths: list[Path], tmp_path: Path
) -> None:
    """The page served under /some/prefix/ by a proxy in front: every request it makes stays
    under the prefix (a root-relative URL would miss the gateway)."""
    gateway = explorer.url.rstrip("/")
    prefix = gateway + "/proxy/8888/"
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    missed: list[str] = []
    errors: list[str] = []

    def proxy(route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")):
            route.continue_()
        elif url.startswith(prefix):
            upstream = route.fetch(url=gateway + "/" + url[len(prefix) :])
            route.fulfill(response=upstream)
        else:
            missed.append(url)
            route.abort()

    page.route("**/*", proxy)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(prefix + "#sample=digit_4.png")
        wait_ready(page)
        maps = page.evaluate(
            "[...document.querySelectorAll('#grid img.map')].map(i => i.naturalWidth)"
        )
        assert len(maps) == 3 and all(n > 0 for n in maps)
        page.fill("#fv-steps", "16")
        page.locator("#fmaps button").first.click()
        page.wait_for_function(
            "document.querySelector('#fv-status').dataset.state === 'done'", timeout=120_000
        )
        assert missed == [] and errors == []
    finally:
        page.close()


def test_an_overlay_on_a_non_square_colour_image_lands_where_render_puts_it(
    open_page: Callable[..., Watched], sample_paths: list[Path], tmp_path: Path
) -> None:
    """A 48x40 RGB upload: the server resizes it for the model; the page resamples the map
    back onto the image as deepvis.render does (pixel centres, both axes apart)."""
    wide = tmp_path / "wide.png"
    digit = Image.open(sample_paths[6]).convert("RGB").resize((48, 40), Image.Resampling.BILINEAR)
    tinted = np.asarray(digit).astype(np.int32) * np.array([1.0, 0.8, 0.5])
    Image.fromarray(tinted.astype(np.uint8), "RGB").save(wide)
    w = open_page()
    w.page.select_option("#overlay", "on")
    upload(w, wide)
    arrays = {m: downloaded_array(w, m, tmp_path) for m in METHODS}
    source = Image.open(wide)
    for m in METHODS:
        drawn = picture(w, f"[data-card={m}] img.map")
        assert drawn.shape == (40, 48, 3)
        np.testing.assert_array_equal(drawn, expected(m, arrays, source, overlay=True))
    w.check()


def test_the_view_exports_as_the_self_contained_report(
    open_page: Callable[..., Watched], tmp_path: Path
) -> None:
    w = open_page("#sample=digit_8.png&methods=guided_backprop,grad_cam,saliency&cmap=viridis")
    w.wait_ready()
    second = w.page.get_attribute("#chips .chip:nth-child(2)", "data-index")
    w.page.click("#chips .chip:nth-child(2)")
    w.wait_ready()
    with w.page.expect_download() as info:
        w.page.click("#export")
    assert info.value.suggested_filename == "digit_8-report.html"
    path = tmp_path / "report.html"
    info.value.save_as(path)
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|//|<script|<link|@import|url\(", without_data)
    assert "digit_8.png" in page and "deepvis-ui-" not in page  # named as the page knew it
    for words in ("guided_backprop", "grad_cam", "saliency", "viridis", f"class {second}"):
        assert words in page, words
    assert page.count('class="v v-') == 3 * 3
    w.check()


def test_a_refused_call_shows_its_status_and_message_where_the_picture_would_be(
    open_page: Callable[..., Watched], digits_server: Any, sample_paths: list[Path]
) -> None:
    w = open_page("#sample=digit_1.png&target=conv3%3A999")
    w.page.wait_for_function(
        "document.querySelectorAll('#grid .card[data-state=error]').length === 3"
    )
    w.wait_ready()
    with deepvis.Client(digits_server.bound_address) as client:
        with pytest.raises(deepvis.InvalidArgument) as direct:
            client.explain(
                str(sample_paths[1]), method="saliency", target=deepvis.Neuron("conv3", 999)
            )
    shown = w.page.eval_on_selector_all(
        "#grid .card .error[role=alert]", "es => es.map(e => e.textContent)"
    )
    assert len(shown) == 3
    assert f"INVALID_ARGUMENT: {direct.value.details}" in shown
    assert all(t.startswith("INVALID_ARGUMENT: ") and "999" in t for t in shown), shown
    assert w.page.locator("[data-card=layer-grad_cam] .error").count() == 1
    # The only console errors are the browser's notes of those refused requests.
    assert w.errors and all("status of 400" in e for e in w.errors), w.errors
    w.errors.clear()
    w.check()


DROP = """async ([kind, name]) => {
  const blob = await (await fetch('api/samples/' + name)).blob();
  const data = new DataTransfer();
  data.items.add(new File([blob], name, { type: 'image/png' }));
  if (kind === 'drop') {
    document.querySelector('#drop').dispatchEvent(
      new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
  } else {
    document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true }));
  }
}"""


def test_an_image_dropped_or_pasted_is_explained_and_hover_reads_the_overlay(
    open_page: Callable[..., Watched], tmp_path: Path
) -> None:
    w = open_page()
    for kind, name in (("drop", "digit_2.png"), ("paste", "digit_9.png")):
        w.page.evaluate(DROP, [kind, name])
        w.page.wait_for_function(
            f"document.querySelector('#source-name').textContent.startsWith({name!r})"
        )
        w.wait_ready()
        assert w.page.text_content("#target").startswith(f"target: class {name[6]} (p=")
        assert "sample=" not in w.page.url  # an upload is no sample: the URL does not name it
    # Hover over the Grad-CAM overlay: the map's value under the pointer.
    cam = downloaded_array(w, "grad_cam", tmp_path)
    shown = w.page.locator("[data-card=grad_cam] img.map")
    box = shown.bounding_box()
    assert box is not None
    x, y = 11, 25
    shown.hover(position={"x": (x + 0.5) * box["width"] / 32, "y": (y + 0.5) * box["height"] / 32})
    value = float(w.page.get_attribute("[data-card=grad_cam] .hover", "data-value") or "nan")
    assert value == pytest.approx(float(cam[y, x]))
    w.check()


def test_a_large_photo_is_overlaid_at_a_size_that_redraws_at_once(
    open_page: Callable[..., Watched], sample_paths: list[Path], tmp_path: Path
) -> None:
    big = tmp_path / "big.png"
    Image.open(sample_paths[0]).convert("RGB").resize((1200, 900)).save(big)
    w = open_page()
    upload(w, big)
    assert "1200×900 (overlays drawn at 512×384)" in (w.page.text_content("#source-name") or "")
    size = w.page.evaluate(
        "(() => { const i = document.querySelector('[data-card=grad_cam] img.map'); "
        "return [i.naturalWidth, i.naturalHeight]; })()"
    )
    assert size == [512, 384]
    start = time.monotonic()
    w.page.focus("#alpha")
    w.page.keyboard.press("ArrowLeft")
    assert time.monotonic() - start < 2.0
    w.check()


def checks_done(w: Watched) -> str:
    w.page.wait_for_function(
        "['done', 'error'].includes(document.querySelector('#checks-status').dataset.state) && "
        "document.body.dataset.pending === '0'",
        timeout=120_000,
    )
    return str(w.page.get_attribute("#checks-status", "data-state"))


def test_checks_draw_each_methods_curves_with_the_python_clients_aucs(
    open_page: Callable[..., Watched], sample_paths: list[Path], digits_server: Any
) -> None:
    w = open_page()
    upload(w, sample_paths[6])
    w.page.fill("#checks-steps", "12")
    w.page.click("#checks")
    assert checks_done(w) == "done"
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        oracle = client.evaluate(
            sample_paths[6],
            method=list(METHODS),
            metrics=["randomization", "deletion", "insertion"],
            steps=12,
            seed=0,
            randomization="cascading",
        )

    def curves() -> list[tuple[str, str, bool, int]]:
        return w.page.evaluate(
            "[...document.querySelectorAll('#grid .card .checks img')].map(i => "
            "[i.closest('.card').dataset.card, i.alt, i.complete, i.naturalWidth])"
        )

    shown = curves()
    assert [(card, alt) for card, alt, _, _ in shown] == [
        (m, f"{kind} curve of {m}")
        for m in METHODS
        for kind in ("deletion", "insertion", "randomization")
    ]
    assert all(done and width > 0 for _, _, done, width in shown), shown
    # No curve in the layer view's Grad-CAM card: the checks are the grid's.
    assert w.page.locator("[data-card=layer-grad_cam] .checks").count() == 0
    for m in METHODS:
        card = f"#grid [data-card={m}]"
        for kind in ("deletion", "insertion"):
            curve = getattr(oracle[m], kind)
            want = float(curve.auc[0])
            span = w.page.locator(f"{card} .auc[data-kind={kind}]")
            assert span.text_content() == f"{want:.3f}"
            assert float(str(span.get_attribute("data-value"))) == pytest.approx(want, abs=1e-6)
            drawn = picture(w, f"{card} img[alt='{kind} curve of {m}']")
            assert np.array_equal(drawn, np.asarray(curve.plot(f"{kind}: {m}", size=(240, 150))))
        r = oracle[m].randomization
        assert r is not None and r.spearman is not None
        rho = float(r.spearman[0, 0])
        value = w.page.locator(f"{card} .rho").get_attribute("data-value")
        assert float(str(value)) == pytest.approx(rho, abs=1e-6)
        verdict = w.page.locator(f"{card} .checks strong").text_content()
        assert verdict == ("passes" if rho < 0.5 else "fails")
    # Redrawing the maps (another colormap) keeps the curves beside them.
    w.page.select_option("#cmap", "viridis")
    w.page.wait_for_function("document.body.dataset.pending === '0'")
    assert len(curves()) == 9
    # Another image: the old checks go.
    upload(w, sample_paths[7])
    assert curves() == []
    w.check()


def test_a_refused_check_shows_its_status_and_message(
    open_page: Callable[..., Watched], sample_paths: list[Path], digits_server: Any
) -> None:
    w = open_page()
    upload(w, sample_paths[2])
    w.page.fill("#checks-steps", "5000")
    w.page.click("#checks")
    assert checks_done(w) == "error"
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        with pytest.raises(deepvis.DeepvisError) as direct:
            client.evaluate(sample_paths[2], method=list(METHODS), steps=5000)
    shown = w.page.locator("#checks-status .error").text_content()
    assert shown == f"INVALID_ARGUMENT: {' '.join(direct.value.details.split())}"
    assert w.page.locator("#grid .checks").count() == 0
    # The browser logs the refused request itself, and nothing else.
    assert w.errors and all("status of 400" in e for e in w.errors), w.errors
    w.errors.clear()
    w.check()
