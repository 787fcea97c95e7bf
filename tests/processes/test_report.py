"""`deepvis report` against a real server, and the page it writes in headless Chromium.

The browser is Debian's chromium (what `make install` installs), driven by Playwright; the
test skips only where no chromium binary exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from deepvis._cli import main


@pytest.fixture(scope="module")
def report(digits_server, sample_paths, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    argv = ["report", *map(str, sample_paths[:3]), "--server", digits_server.bound_address]
    argv += ["--model", "digits", "--method", "guided_backprop,grad-cam,saliency", "-o", str(out)]
    assert main([*argv, "--quiet"]) == 0
    return out


def test_the_report_is_one_file_that_names_everything(report: Path, sample_paths) -> None:
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>")
    # Nothing from elsewhere: no URL but data: ones, no script, no link, no @import.
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|//|<script|<link|@import|url\(", without_data)
    for p in sample_paths[:3]:
        assert str(p) in page
    for words in ("guided_backprop", "grad_cam", "saliency", "digits", "inferno", "RdBu_r"):
        assert words in page
    assert page.count("<section") == 3
    # Top-5 predictions for each image, and three scales for each of its 3 maps.
    assert page.count("<li>") == 15
    assert page.count('class="v v-') == 3 * 3 * 3


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_the_report_opens_offline_and_reads_at_desktop_and_phone_sizes(
    browser: Any, report: Path, width: int, height: int, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": width, "height": height})
    elsewhere: list[str] = []
    errors: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:  # anything else would be a request leaving the file
            elsewhere.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate(
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    assert images and all(ok and w > 0 and alt for ok, w, alt in images), images
    assert elsewhere == [] and errors == []
    # Readable: nothing wider than the window, no text smaller than 12 px.
    scroll, client = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll <= client, (scroll, client)
    smallest = page.evaluate(
        "Math.min(...Array.from(document.querySelectorAll('body *'))"
        ".filter(e => e.childNodes.length && [...e.childNodes].some(n => n.nodeType === 3 "
        "&& n.textContent.trim())).map(e => parseFloat(getComputedStyle(e).fontSize)))"
    )
    assert smallest >= 12
    page.screenshot(path=str(tmp_path / f"report-{width}.png"))

    # The scale toggle: one scale variant shown per map; another one after a click.
    def shown() -> list[str]:
        return page.evaluate(
            "Array.from(document.querySelectorAll('.cell img'))"
            ".filter(i => getComputedStyle(i).display !== 'none').map(i => i.className)"
        )

    assert set(shown()) == {"v v-own"} and len(shown()) == 9
    page.click("label[for=s-images]")
    assert set(shown()) == {"v v-images"} and len(shown()) == 9
    page.click("label[for=s-methods]")
    assert set(shown()) == {"v v-methods"}
    assert elsewhere == [] and errors == []
    page.close()


# --- --checks: the curves beside the pictures -------------------------------------------------

CHECKED = ["guided_backprop", "grad_cam", "saliency"]


@pytest.fixture(scope="module")
def checked_report(digits_server, sample_paths, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("checked") / "report.html"
    argv = ["report", *map(str, sample_paths[:3]), "--server", digits_server.bound_address]
    argv += ["--model", "digits", "--method", ",".join(CHECKED), "-o", str(out), "--quiet"]
    assert main([*argv, "--checks", "--check-steps", "12", "--seed", "7"]) == 0
    return out


def test_checks_show_the_clients_aucs_and_randomization_readings(
    checked_report: Path, digits_server, sample_paths, browser: Any
) -> None:
    import numpy as np

    import deepvis

    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        oracle = client.evaluate(
            [str(p) for p in sample_paths[:3]],
            model="digits",
            method=CHECKED,
            metrics=["randomization", "deletion", "insertion"],
            steps=12,
            seed=7,
            randomization="cascading",
        )
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    elsewhere: list[str] = []
    errors: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            elsewhere.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(checked_report.as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate(
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    assert images and all(ok and w > 0 and alt for ok, w, alt in images), images
    alts = [alt for _, _, alt in images]
    for kind in ("deletion", "insertion"):
        for m in CHECKED:
            for p in sample_paths[:3]:
                shown = f"{kind} curve of {m.replace('_', '-')} on {p.name}"
                assert alts.count(shown) == 1, shown
    for m in CHECKED:
        assert alts.count(f"randomization curve of {m.replace('_', '-')}") == 1
    # Each curve sits in its image's card, right after its method's picture.
    beside = page.evaluate(
        "Array.from(document.querySelectorAll('section.image .row')).map(r => "
        "Array.from(r.children).map(f => f.classList.contains('cell') ? 'map' : "
        "f.classList.contains('checks') ? 'curve' : 'input'))"
    )
    assert beside == [["input", *(["map", "curve", "curve"] * 3)]] * 3
    aucs = page.evaluate(
        "Array.from(document.querySelectorAll('.auc')).map(e => [e.dataset.method, "
        "Number(e.dataset.image), e.dataset.kind, Number(e.dataset.value), e.textContent])"
    )
    assert len(aucs) == 3 * 3 * 2
    for method, i, kind, value, text in aucs:
        want = float(getattr(oracle[method], kind).auc[i])
        assert value == pytest.approx(want, abs=1e-6), (method, i, kind)
        assert text == f"{want:.3f}"
    readings = page.evaluate(
        "Array.from(document.querySelectorAll('.rho')).map(e => [e.dataset.method, "
        "Number(e.dataset.value), e.parentElement.textContent])"
    )
    assert [r[0] for r in readings] == CHECKED
    for method, value, caption in readings:
        randomization = oracle[method].randomization
        assert randomization is not None and randomization.spearman is not None
        rho = randomization.spearman[:, 0]
        want = float(np.nanmean(rho))
        assert value == pytest.approx(want, abs=1e-6)
        assert ("passes" if want < 0.5 else "fails") in caption, caption
        assert oracle.layers[0] in caption
    assert elsewhere == [] and errors == []
    page.close()


def test_checks_refuse_a_neuron_target_and_activations_alone(
    digits_server, sample_paths, tmp_path: Path, capsys
) -> None:
    argv = ["report", str(sample_paths[0]), "--server", digits_server.bound_address, "--quiet"]
    argv += ["--neuron", "conv3:1", "--checks", "-o", str(tmp_path / "r.html")]
    assert main(argv) != 0
    assert "--checks evaluates a class's maps" in capsys.readouterr().err
    assert main([*argv[:-5], "-m", "activations", "--checks", "-o", str(tmp_path / "r.html")]) != 0
    assert "not activations alone" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_checks_leave_out_activations_and_check_the_others(
    digits_server, sample_paths, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    argv = ["report", str(sample_paths[5]), "--server", digits_server.bound_address, "--quiet"]
    assert main([*argv, "-m", "activations,saliency", "--checks", "-o", str(out)]) == 0
    page = out.read_text()
    assert page.count('alt="deletion curve of saliency on digit_5.png"') == 1
    assert page.count('alt="randomization curve of saliency"') == 1
    assert "curve of activations" not in page
    assert page.count('class="auc"') == 2 and "16 steps" in page
