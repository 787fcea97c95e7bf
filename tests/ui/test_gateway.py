"""`deepvis ui`'s gateway over HTTP, against a real server: binding, failures, streams."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import pytest
from PIL import Image

import deepvis
from deepvis._cli import main
from deepvis.ui import is_loopback
from deepvis.ui._gateway import PAGE_HEADER, STATIC
from deepvis_server.config import load_config
from deepvis_server.server import serve_in_thread
from ports import free_port

from .ui_process import Explorer


def call(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request as the page makes it (a POST with the page's header), and its JSON."""
    method = "POST" if body is not None else "GET"
    sent = {PAGE_HEADER: "1"} if method == "POST" else {}
    request = Request(url, data=body, method=method, headers={**sent, **(headers or {})})
    try:
        with urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def test_the_gateway_refuses_a_non_loopback_address_without_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["ui", "--host", "0.0.0.0", "--server", "127.0.0.1:1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "refusing to bind 0.0.0.0" in err and "--allow-remote" in err
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.1.2.3")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org")] == [False] * 4


def test_its_url_comes_first_and_the_page_names_no_other_origin(explorer: Explorer) -> None:
    parts = urlsplit(explorer.url)
    assert (parts.scheme, parts.hostname, parts.path) == ("http", "127.0.0.1", "/")
    with urlopen(explorer.url, timeout=30) as response:
        page = response.read().decode()
    assert page.startswith("<!DOCTYPE html>")
    # Relative URLs only (a proxy path in front keeps working), and nothing from elsewhere.
    for name in ("index.html", "app.js", "app.css"):
        text = STATIC.joinpath(name).read_text()
        assert not re.search(r"https?:|//[a-z]|@import|url\(", text), name
        assert not re.search(r"""(src|href|fetch\()\s*=?\s*["'`]/""", text), name


def test_failed_calls_answer_with_the_servers_status_and_message(
    explorer: Explorer, digits_server: Any, sample_paths: list[Path]
) -> None:
    digit = sample_paths[2].read_bytes()
    cases = [
        ({"model": "nope", "method": "saliency"}, "NotFound"),
        ({"method": "grad_cam", "layer": "nope"}, None),
        ({"method": "saliency", "target": "12"}, None),
    ]
    with deepvis.Client(digits_server.bound_address) as client:
        for params, _ in cases:
            query = "&".join(f"{k}={v}" for k, v in params.items())
            status, body = call(f"{explorer.url}api/explain?{query}", digit)
            # The oracle: the same call through the Python client.
            target = int(params["target"]) if "target" in params else None
            with pytest.raises(deepvis.DeepvisError) as direct:
                client.explain(
                    digit,
                    model=params.get("model"),
                    method=params["method"],
                    layer=params.get("layer"),
                    target=target,
                )
            assert body == {"code": direct.value.code.name, "message": direct.value.details}
            assert status == {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400}[body["code"]]
    status, body = call(f"{explorer.url}api/models/nope/layers")
    assert (status, body["code"]) == (404, "NOT_FOUND") and "nope" in body["message"]
    # Arguments refused before any call: 400, and what is valid.
    status, body = call(f"{explorer.url}api/explain?method=saliency", b"not an image")
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT") and "PNG" in body["message"]
    status, body = call(f"{explorer.url}api/explain?method=saliency&target=a:b", digit)
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT") and "LAYER:C" in body["message"]


def test_a_server_that_is_down_gives_a_clear_message_in_the_page(browser: Any) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    ui = Explorer("--server", address, "--timeout", "5")
    try:
        status, body = call(f"{ui.url}api/models")
        assert (status, body["code"]) == (503, "UNAVAILABLE")
        assert address in body["hint"] and "running" in body["hint"]
        page = browser.new_page()
        try:
            page.goto(ui.url)
            page.wait_for_function("document.body.dataset.ready === 'error'", timeout=30_000)
            banner = page.text_content("#banner[role=alert]") or ""
            assert banner.startswith("UNAVAILABLE: ") and address in banner
        finally:
            page.close()
    finally:
        ui.close()


def test_samples_come_from_the_folder_given_and_only_from_it(
    tmp_path: Path, digits_server: Any
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("L", (40, 24), 128).save(folder / "wide.png")
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "secret.png").write_bytes(b"outside the folder")
    ui = Explorer("--server", digits_server.bound_address, "--samples", str(folder))
    try:
        assert call(f"{ui.url}api/samples")[1] == {"folder": str(folder), "names": ["wide.png"]}
        with urlopen(f"{ui.url}api/samples/wide.png", timeout=30) as response:
            assert response.read() == (folder / "wide.png").read_bytes()
        for name in ("notes.txt", "..%2Fsecret.png", "secret.png"):
            status, body = call(f"{ui.url}api/samples/{name}")
            assert (status, body["code"]) == (404, "NOT_FOUND"), name
            assert "wide.png" in body["message"]
    finally:
        ui.close()
    assert ui.process.returncode == 0  # SIGTERM: a clean stop


def _render_jobs(server: Any) -> int:
    return sum(v.active_jobs for v in server.engine.visualizers.values())


def _wait_no_jobs(server: Any, seconds: float = 15.0) -> int:
    deadline = time.monotonic() + seconds
    while _render_jobs(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _render_jobs(server)


def test_a_page_that_goes_away_mid_stream_ends_its_job_on_the_server(
    explorer: Explorer, digits_server: Any
) -> None:
    parts = urlsplit(explorer.url)
    assert parts.hostname is not None and parts.port is not None
    for _ in range(2):  # twice: the gateway keeps serving after a reader vanished
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        path = "/api/visualize?layer=conv2&channel=3&steps=4096&progress_every=4"
        conn.request("POST", path, headers={PAGE_HEADER: "1"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        seen = b""
        while b"event: progress" not in seen:
            seen += response.read1(65536)
        assert b"event: job" in seen
        assert _render_jobs(digits_server) == 1
        conn.close()  # the page closed, without cancelling
        assert _wait_no_jobs(digits_server) == 0
        assert call(f"{explorer.url}api/jobs")[1] == {"running": 0}


def test_a_bad_visualization_request_fails_before_streaming(explorer: Explorer) -> None:
    status, body = call(f"{explorer.url}api/visualize?layer=conv2&channel=x", b"")
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT") and "channel" in body["message"]
    status, body = call(f"{explorer.url}api/jobs/nope/cancel", b"")
    assert (status, body["code"]) == (404, "NOT_FOUND")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_the_gateway_reaches_a_tls_server_with_a_token_as_the_cli_does(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    from pki import tls_and_token

    config = load_config()
    access = tls_and_token(config.access, tmp_path, "s3cret-token")
    with serve_in_thread(replace(config, access=access), "127.0.0.1:0") as server:
        tls = ["--server", server.bound_address, "--tls-ca", str(tmp_path / "ca.pem")]
        ui = Explorer(*tls, "--token", "s3cret-token")
        try:
            status, models = call(f"{ui.url}api/models")
            assert status == 200 and [m["name"] for m in models] == ["digits"]
            status, body = call(
                f"{ui.url}api/explain?method=grad_cam", sample_paths[4].read_bytes()
            )
            assert status == 200 and body["target"] == {"class": 4}
        finally:
            ui.close()
        ui = Explorer(*tls)  # no token: the server's refusal, as it said it
        try:
            status, body = call(f"{ui.url}api/models")
            assert (status, body["code"]) == (401, "UNAUTHENTICATED")
            with pytest.raises(deepvis.Unauthenticated) as direct:
                with deepvis.Client(
                    server.bound_address, root_certificates=(tmp_path / "ca.pem").read_bytes()
                ) as client:
                    client.models()
            assert body["message"] == direct.value.details
        finally:
            ui.close()


def test_requests_naming_another_host_or_posts_from_elsewhere_are_refused(
    explorer: Explorer, digits_server: Any, sample_paths: list[Path]
) -> None:
    digit = sample_paths[0].read_bytes()
    port = urlsplit(explorer.url).port
    # A page elsewhere that reaches the gateway by a DNS name pointed at 127.0.0.1.
    status, body = call(f"{explorer.url}api/models", headers={"Host": f"evil.example:{port}"})
    assert (status, body["code"]) == (403, "PERMISSION_DENIED")
    assert "'evil.example'" in body["message"] and "--allow-host" in body["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert call(f"{explorer.url}api/models", headers={"Host": host})[0] == 200
    # A cross-origin form or fetch cannot send the page's header without a preflight.
    with pytest.raises(HTTPError) as refused:
        urlopen(Request(f"{explorer.url}api/explain?method=saliency", data=digit), timeout=30)
    with refused.value as err:
        assert err.code == 403 and PAGE_HEADER in json.loads(err.read())["message"]
    # A proxy in front that sends its own name: allowed by name.
    ui = Explorer("--server", digits_server.bound_address, "--allow-host", "notebooks.lan")
    try:
        status, _ = call(f"{ui.url}api/models", headers={"Host": "notebooks.lan"})
        assert status == 200
        assert call(f"{ui.url}api/models", headers={"Host": "other.lan"})[0] == 403
    finally:
        ui.close()


HIDE = Path(__file__).resolve().parents[1] / "hide"


def _python_without(hide: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python ARGS` on a machine without the packages `hide` names (tests/hide)."""
    env = {**os.environ, "PYTHONPATH": str(HIDE), "DEEPVIS_TEST_HIDE": hide}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_without_the_ui_extra_the_command_says_what_to_install() -> None:
    proc = _python_without("aiohttp", "-m", "deepvis", "ui", "--server", "127.0.0.1:1")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "pip install 'deepvis[ui]'" in proc.stderr and "aiohttp" in proc.stderr


def test_the_gateway_stays_a_thin_client_without_torch_or_the_server_package() -> None:
    code = (
        "import sys; import deepvis.ui._gateway as g; "
        "assert not {'torch', 'deepvis_server'} & set(sys.modules), sorted(sys.modules); "
        "print(g.default_samples())"
    )
    proc = _python_without("torch,torchvision,deepvis_server", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"  # no server package: no default samples
    proc = _python_without("torch,torchvision", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("default_model/samples")


def test_a_killed_gateway_leaves_no_job_on_the_server(digits_server: Any) -> None:
    ui = Explorer("--server", digits_server.bound_address)
    try:
        parts = urlsplit(ui.url)
        assert parts.hostname is not None and parts.port is not None
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        path = "/api/visualize?layer=conv3&channel=1&steps=4096&progress_every=4"
        conn.request("POST", path, headers={PAGE_HEADER: "1"})
        response = conn.getresponse()
        seen = b""
        while b"event: progress" not in seen:
            seen += response.read1(65536)
        assert _render_jobs(digits_server) == 1
        ui.process.kill()  # no goodbye: the server sees its channel drop
        ui.process.wait(10)
        conn.close()
        assert _wait_no_jobs(digits_server) == 0
    finally:
        ui.close()
    # The server serves on.
    with deepvis.Client(digits_server.bound_address, timeout=30) as client:
        assert client.models()[0].name == "digits"


def test_the_evaluate_endpoint_gives_the_python_clients_checks(
    explorer: Explorer, digits_server: Any, sample_paths: list[Path]
) -> None:
    import base64
    import io

    import numpy as np

    digit = sample_paths[4].read_bytes()
    methods = ["grad_cam", "saliency"]
    url = f"{explorer.url}api/evaluate?methods={','.join(methods)}&steps=12&seed=3"
    status, body = call(url, digit)
    assert status == 200, body
    with deepvis.Client(digits_server.bound_address, timeout=120) as client:
        oracle = client.evaluate(
            digit,
            method=methods,
            metrics=["randomization", "deletion", "insertion"],
            steps=12,
            seed=3,
            randomization="cascading",
        )
    assert (body["model"], body["steps"], body["seed"]) == ("digits", 12, 3)
    assert body["class"] == oracle.classes[0] and body["layers"] == list(oracle.layers)
    assert list(body["methods"]) == methods

    def picture(uri: str) -> np.ndarray:
        assert uri.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as img:
            return np.asarray(img.convert("RGB"))

    for m in methods:
        got, want = body["methods"][m], oracle[m]
        for kind in ("deletion", "insertion"):
            curve = getattr(want, kind)
            assert got[kind]["auc"] == pytest.approx(float(curve.auc[0]), abs=1e-6)
            assert got[kind]["curve"] == pytest.approx(curve.curve[0].tolist(), abs=1e-6)
            assert len(got[kind]["curve"]) == 13
            # The plot is the client's own plot of the same curve.
            assert np.array_equal(
                picture(got[kind]["plot"]), np.asarray(curve.plot(f"{kind}: {m}", size=(240, 150)))
            )
        r = want.randomization
        assert r is not None and r.spearman is not None
        rho = float(r.spearman[0, 0])
        assert got["randomization"]["layers"] == list(r.layers)
        assert got["randomization"]["top_layer"] == pytest.approx(rho, abs=1e-6)
        assert got["randomization"]["passes"] is (rho < 0.5)
        assert picture(got["randomization"]["plot"]).shape == (150, 240, 3)


def test_a_refused_evaluate_answers_with_the_servers_status_and_message(
    explorer: Explorer, digits_server: Any, sample_paths: list[Path]
) -> None:
    digit = sample_paths[1].read_bytes()
    status, body = call(f"{explorer.url}api/evaluate?methods=saliency&steps=5000", digit)
    with deepvis.Client(digits_server.bound_address, timeout=60) as client:
        with pytest.raises(deepvis.DeepvisError) as direct:
            client.evaluate(digit, method="saliency", steps=5000, metrics="deletion")
    assert body == {"code": direct.value.code.name, "message": direct.value.details}
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT") and "steps" in body["message"]
    status, body = call(f"{explorer.url}api/evaluate?methods=saliency&model=nope", digit)
    assert (status, body["code"]) == (404, "NOT_FOUND") and "nope" in body["message"]
    # Refused before any call: a neuron target, no methods, no image, no page header.
    status, body = call(f"{explorer.url}api/evaluate?methods=saliency&target=conv3:1", digit)
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT") and "class" in body["message"]
    status, body = call(f"{explorer.url}api/evaluate?methods=", digit)
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT") and "methods" in body["message"]
    status, body = call(f"{explorer.url}api/evaluate?methods=saliency", b"")
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
    with pytest.raises(HTTPError) as refused:
        urlopen(Request(f"{explorer.url}api/evaluate?methods=saliency", data=digit), timeout=30)
    with refused.value as err:
        assert err.code == 403 and PAGE_HEADER in json.loads(err.read())["message"]
