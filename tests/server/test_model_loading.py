"""Model loading over real gRPC: the embedded default, builder arguments, what an arch may
name, model_root confinement, weights-only loading and per-model isolation."""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import Saliency
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file
from torch import nn

import deepvis
from deepvis_server.config import ConfigError, load_config, parse_config
from deepvis_server.models import load_model
from deepvis_server.process import ServerProcess
from deepvis_server.security import resolve_under_root
from deepvis_server.server import DeepvisServer, model_health_service, serve_in_thread
from oracles import relative_error
from ports import free_port
from zoo import saved_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the server extra's tomli
    import tomli as tomllib

# How a configuration names this module's builders (server.test_model_loading under pytest).
HERE = __name__

DIGITS = load_config().models[0]
CPU = torch.device("cpu")


class CodePayload:
    """Unpickling this calls open(marker, "w"): code run by loading a 'weights' file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.marker), "w"))


def digits_table(name: str, weights: str, labels: str | None = None) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": name,
        "arch": DIGITS.arch,
        "weights": weights,
        "num_classes": 10,
        "channels": 1,
        "input_size": list(DIGITS.input_size),
        "mean": list(DIGITS.mean),
        "std": list(DIGITS.std),
    }
    if labels is not None:
        table["labels"] = labels
    return table


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base/models (the model_root) and base/outside, with good, escaping and evil files."""
    base = tmp_path_factory.mktemp("loading")
    root, outside = base / "models", base / "outside"
    root.mkdir()
    outside.mkdir()
    assert DIGITS.weights is not None and DIGITS.labels is not None
    for d in (root, outside):
        shutil.copy(DIGITS.weights, d / "digits.safetensors")
        shutil.copy(DIGITS.labels, d / "labels.txt")
    (root / "link.safetensors").symlink_to(outside / "digits.safetensors")
    (root / "labels-link.txt").symlink_to(outside / "labels.txt")
    # A real state dict of the digits model, plus one entry whose unpickling runs code.
    marker = base / "payload-ran"
    state: dict[str, Any] = dict(load_file(str(DIGITS.weights)))
    state["extra"] = CodePayload(marker)
    torch.save(state, root / "evil.pt")
    return {"base": base, "root": root, "outside": outside, "marker": marker}


@pytest.fixture(scope="module")
def mixed_server(layout: dict[str, Path]) -> Iterator[DeepvisServer]:
    """One server, five models under one model_root: one good, four that must not load."""
    tables = [
        digits_table("good", "models/digits.safetensors", "models/labels.txt"),
        digits_table("evil", "models/evil.pt"),
        digits_table("dotdot", "models/../outside/digits.safetensors"),
        digits_table("symlink", "models/link.safetensors"),
        digits_table("labels-symlink", "models/digits.safetensors", "models/labels-link.txt"),
    ]
    config = parse_config(
        {"server": {"model_root": "models"}, "models": tables}, layout["base"], None
    )
    with serve_in_thread(config, "127.0.0.1:0") as server:
        yield server


def test_the_payload_is_real_code(layout: dict[str, Path], tmp_path: Path) -> None:
    # Guards the tests below: unpickled without weights_only, the file does run code.
    probe = tmp_path / "probe-ran"
    torch.save({"extra": CodePayload(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()


REFUSED_PICKLE = (
    "model 'evil' is not available: its weights file was refused when the server started "
    "(it holds pickled objects other than tensors)"
)


def test_pickled_code_is_refused_and_never_runs(mixed_server, layout, sample_paths) -> None:
    with deepvis.Client(mixed_server.bound_address, timeout=30) as client:
        with pytest.raises(deepvis.Unavailable) as info:
            client.explain(str(sample_paths[0]), model="evil")
        # Why, in one sentence: not where the server keeps its files, nor torch's advice.
        assert info.value.details == REFUSED_PICKLE
        with pytest.raises(deepvis.Unavailable) as info:
            client.describe("evil")
        assert info.value.details == REFUSED_PICKLE
        with pytest.raises(deepvis.Unavailable) as info:
            client.visualize(3, model="evil", steps=4)
        assert info.value.details == REFUSED_PICKLE
        # The other model of the same server answers, correctly.
        result = client.explain(str(sample_paths[0]), model="good")
        assert result.target == 0 and result.predictions[0].label == "0"
    assert not layout["marker"].exists()
    # The operator's account keeps the path and the unpickler's reason.
    detail = mixed_server.engine.failure_details["evil"]
    assert str(layout["root"] / "evil.pt") in detail and "GLOBAL io.open" in detail


def test_health_reports_each_model(mixed_server) -> None:
    with deepvis.Client(mixed_server.bound_address, timeout=10) as client:
        assert client.health() == "SERVING"
        assert client.health("deepvis.v1.Explainer") == "SERVING"
        assert client.health(model_health_service("good")) == "SERVING"
        for name in ("evil", "dotdot", "symlink", "labels-symlink"):
            assert client.health(model_health_service(name)) == "NOT_SERVING", name
        assert [m.name for m in client.models()] == ["good"]


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("dotdot", "models/../outside/digits.safetensors"),
        ("symlink", "models/link.safetensors"),
        ("labels-symlink", "models/labels-link.txt"),
    ],
)
def test_paths_outside_model_root_are_refused(
    mixed_server, layout, sample_paths, model, path
) -> None:
    with deepvis.Client(mixed_server.bound_address, timeout=10) as client:
        with pytest.raises(deepvis.Unavailable) as info:
            client.explain(str(sample_paths[0]), model=model)
    kind = "labels" if "labels" in path else "weights"
    assert info.value.details == (
        f"model '{model}' is not available: its {kind} file is not inside the server's model_root"
    )
    detail = mixed_server.engine.failure_details[model]
    assert str(layout["base"] / path) in detail and "outside model_root" in detail, detail


def test_resolve_under_root_names_the_path(layout) -> None:
    root = layout["root"]
    assert resolve_under_root(root / "digits.safetensors", root, "w") == (
        (root / "digits.safetensors").resolve()
    )
    for escaping in (root / ".." / "outside" / "digits.safetensors", root / "link.safetensors"):
        with pytest.raises(ConfigError, match="outside model_root") as info:
            resolve_under_root(escaping, root, "weights")
        assert str(escaping) in str(info.value)
    spec = parse_config(
        {"models": [digits_table("m", "models/link.safetensors")]}, layout["base"], None
    ).models[0]
    with pytest.raises(ConfigError, match="link.safetensors"):
        load_model(spec, torch.device("cpu"), model_root=root)
    # Without a model_root nothing is confined (the operator's own paths).
    assert load_model(spec, torch.device("cpu")).name == "m"


def test_no_model_loaded_is_a_config_error(layout) -> None:
    config = parse_config(
        {"server": {"model_root": "models"}, "models": [digits_table("evil", "models/evil.pt")]},
        layout["base"],
        None,
    )
    with pytest.raises(ConfigError, match="no model could be loaded: model 'evil'"):
        with serve_in_thread(config, "127.0.0.1:0"):
            pass
    assert not layout["marker"].exists()


def _server_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deepvis_server", "--address", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_server_exits_2_when_no_model_loads(layout) -> None:
    cfg = layout["base"] / "evil-only.toml"
    cfg.write_text(
        '[server]\nmodel_root = "models"\n\n[[models]]\nname = "evil"\n'
        f'arch = "{DIGITS.arch}"\nweights = "models/evil.pt"\nnum_classes = 10\n'
        "channels = 1\ninput_size = [32, 32]\n"
    )
    proc = _server_process("--config", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert "ConfigError: no model could be loaded: model 'evil'" in proc.stderr
    assert not layout["marker"].exists()


def test_server_exits_2_at_once_on_invalid_toml(tmp_path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[[models]\nname = \n")
    proc = _server_process("--config", str(cfg))
    assert proc.returncode == 2
    assert "ConfigError:" in proc.stderr and "invalid TOML" in proc.stderr


def test_gil_switch_interval_is_a_positive_number_of_ms(tmp_path) -> None:
    base = {"models": [{"name": "m", "arch": "resnet18", "num_classes": 2, "input_size": [8, 8]}]}
    assert parse_config(base, tmp_path).gil_switch_interval_ms == 0.5
    cfg = parse_config({"server": {"gil_switch_interval_ms": 2}, **base}, tmp_path)
    assert cfg.gil_switch_interval_ms == 2.0
    for bad in (0, -1, 101, True, "1"):
        with pytest.raises(
            ConfigError, match=r"gil_switch_interval_ms must be a number in \(0, 100\]"
        ):
            parse_config({"server": {"gil_switch_interval_ms": bad}, **base}, tmp_path)


def test_cpu_threads_sizes_the_off_loop_pool(tmp_path) -> None:

    from deepvis_server.engine import Engine

    model = {"name": "m", "arch": "resnet18", "num_classes": 2, "input_size": [8, 8]}
    base = {"models": [model]}
    default = parse_config(base, tmp_path)
    assert default.cpu_threads == min(8, os.cpu_count() or 2)
    cfg = parse_config({"server": {"cpu_threads": 3}, **base}, tmp_path)
    engine = Engine(cfg)
    try:
        assert engine.cpu_executor._max_workers == 3
    finally:
        engine.cpu_executor.shutdown()
        engine.device_executor.shutdown()
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ConfigError, match=r"\[server\].cpu_threads must be a positive integer"):
            parse_config({"server": {"cpu_threads": bad}, **base}, tmp_path)


# --- The embedded default model ----------------------------------------------------------


def test_a_config_with_only_server_settings_serves_the_embedded_model(
    tmp_path, sample_paths
) -> None:
    metrics_port = free_port()
    (tmp_path / "models").mkdir()
    cfg = tmp_path / "server-only.toml"
    # model_root confines the operator's files; the embedded model ships with the package.
    cfg.write_text(f'[server]\nmetrics_port = {metrics_port}\nmodel_root = "models"\n')
    with ServerProcess("--device", "cpu", "--config", str(cfg)) as server:
        with deepvis.Client(server.address, timeout=30) as client:
            assert [m.name for m in client.models()] == ["digits"]
            result = client.explain(str(sample_paths[3]))
            assert result.target == 3 and result.predictions[0].label == "3"
        # The [server] settings hold: metrics are on, on the configured port.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(r.read().decode())
                for s in family.samples
            }
        explained = ("deepvis_requests_total", (("code", "OK"), ("method", "Explain")))
        assert samples[explained] == 1
        assert server.stop(timeout=60) == 0, server.log()
    config = parse_config({"server": {"metrics_port": 9100}}, tmp_path)
    assert [m.name for m in config.models] == ["digits"]
    assert config.observability.metrics_port == 9100
    assert config.models == load_config().models


def test_an_empty_models_list_says_what_to_do(tmp_path) -> None:
    cfg = tmp_path / "empty.toml"
    cfg.write_text("models = []\n\n[server]\nmetrics_port = 0\n")
    proc = _server_process("--config", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "ConfigError: models = [] names no model: add a [[models]] table for each model to "
        "serve, or leave `models` out to serve the embedded default model"
    )
    with pytest.raises(ConfigError, match=r"write \[\[models\]\] \(double brackets\)"):
        parse_config({"models": {"name": "m"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"models\[0\] must be a \[\[models\]\] table"):
        parse_config({"models": ["resnet18"]}, tmp_path)


# --- Builder arguments -------------------------------------------------------------------

AUX_OFF = {"aux_logits": False, "init_weights": False}


@pytest.fixture(scope="module")
def aux_free(tmp_path_factory) -> Iterator[tuple[DeepvisServer, dict[str, nn.Module]]]:
    """GoogLeNet and Inception v3 without their auxiliary heads, by torchvision name with
    `kwargs`, random weights saved to files; and their twins, built here the same way."""
    root = tmp_path_factory.mktemp("aux")
    torch.manual_seed(3)
    tables, twins = [], {}
    for arch, side in (("googlenet", 64), ("inception_v3", 75)):
        twin = torchvision.models.get_model(arch, weights=None, num_classes=6, **AUX_OFF).eval()
        tables.append(saved_table(root, arch, arch, twin, 6, (side, side), kwargs=dict(AUX_OFF)))
        twins[arch] = twin
    with serve_in_thread(parse_config({"models": tables}, root), "127.0.0.1:0") as server:
        yield server, twins


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
def test_builder_kwargs_serve_models_without_aux_heads(aux_free, arch) -> None:
    server, twins = aux_free
    twin = twins[arch]
    side = server.engine.models[arch].spec.input_size[0]
    assert server.engine.models[arch].spec.kwargs == AUX_OFF
    # Built without the heads, as the twin: the weights file fitted strictly.
    assert not any("aux" in name.lower() for name in server.engine.models[arch].layers)
    x = np.random.default_rng(5).standard_normal((3, side, side)).astype(np.float32)
    with deepvis.Client(server.bound_address, timeout=120) as client:
        result = client.explain(x, model=arch, method="saliency", target=2, render=False)
    batch = torch.from_numpy(x)[None]
    with torch.no_grad():
        probs = torch.softmax(twin(batch), 1)[0]
    top = probs.argsort(descending=True)[: len(result.predictions)].tolist()
    assert [p.index for p in result.predictions] == top
    assert np.allclose([p.score for p in result.predictions], probs[top].numpy(), atol=1e-5)
    ref = Saliency(twin).attribute(batch.clone(), target=2, abs=True)
    assert relative_error(result.array, ref[0].numpy()) <= 1e-5


def _spec(tmp_path: Path, **table: Any) -> Any:
    base = {"name": "m", "arch": "googlenet", "num_classes": 3, "input_size": [64, 64]}
    return parse_config({"models": [{**base, **table}]}, tmp_path).models[0]


def test_a_kwarg_the_builder_does_not_take_is_a_config_error(tmp_path) -> None:
    CALLS.clear()
    with pytest.raises(ConfigError) as info:
        load_model(_spec(tmp_path, kwargs={"aux_logit": False}), CPU)
    message = str(info.value)
    assert "kwargs.aux_logit is not an argument of torchvision's googlenet" in message
    assert "aux_logits" in message  # the names it does take
    assert info.value.public is not None and "googlenet" not in info.value.public
    spec = _spec(tmp_path, arch=f"{HERE}:build_tiny", kwargs={"depth": 2})
    with pytest.raises(
        ConfigError,
        match=rf"kwargs.depth is not an argument of {re.escape(HERE)}.build_tiny; "
        r"it takes: weights, width",
    ):
        load_model(spec, CPU)
    assert CALLS == []  # refused before the builder ran


def test_kwargs_are_plain_data_and_never_what_the_table_sets(tmp_path) -> None:
    for kwargs, message in [
        ({"num_classes": 3}, "kwargs.num_classes is not allowed: set num_classes in the"),
        ({"weights": "x"}, "kwargs.weights is not allowed"),
        ({"progress": True}, "kwargs.progress is not allowed"),
        ("aux_logits=false", "kwargs must be a table of builder keyword arguments"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _spec(tmp_path, kwargs=kwargs)
    date = tomllib.loads("d = 1979-05-27")["d"]
    with pytest.raises(ConfigError, match=r"kwargs.blocks\[1\] is a date or time"):
        _spec(tmp_path, kwargs={"blocks": [1, date]})
    # A function of the operator's own may take a `weights` argument.
    spec = _spec(tmp_path, arch=f"{HERE}:build_tiny", kwargs={"weights": "x"})
    assert spec.kwargs == {"weights": "x"}


def test_kwargs_that_change_what_torchvision_weights_need_conflict(tmp_path) -> None:
    # Refused before any download: the weights need the heads to load.
    spec = _spec(
        tmp_path,
        weights="torchvision:IMAGENET1K_V1",
        input_size=[224, 224],
        num_classes=1000,
        kwargs={"aux_logits": False},
    )
    with pytest.raises(ConfigError) as info:
        load_model(spec, CPU)
    assert "kwargs.aux_logits = False conflicts with torchvision weights" in str(info.value)
    assert "aux_logits = True" in str(info.value)


# --- What an arch may name ---------------------------------------------------------------

# (name, arch called, kwargs it got), one entry per call of a builder below.
CALLS: list[tuple[str, dict[str, Any]]] = []


class TinyNet(nn.Module):
    """A module class the configuration names directly."""

    def __init__(self, num_classes: int = 4, width: int = 4) -> None:
        super().__init__()
        CALLS.append(("TinyNet", {"num_classes": num_classes, "width": width}))
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def build_tiny(width: int = 4, weights: str | None = None) -> nn.Module:
    """A builder without num_classes: its model has 3 classes, whatever the table says."""
    CALLS.append(("build_tiny", {"width": width, "weights": weights}))
    return TinyNet(num_classes=3, width=width)


def build_any(**kwargs: Any) -> nn.Module:
    CALLS.append(("build_any", dict(kwargs)))
    return TinyNet(**kwargs)


def build_nothing(num_classes: int) -> int:
    CALLS.append(("build_nothing", {"num_classes": num_classes}))
    return num_classes


def build_and_exit(num_classes: int) -> nn.Module:
    CALLS.append(("build_and_exit", {"num_classes": num_classes}))
    raise SystemExit(0)


def test_functions_and_module_classes_are_called_once_as_their_signature_says(
    tmp_path,
) -> None:
    tables = [
        {"name": "fn", "arch": f"{HERE}:build_tiny", "num_classes": 3},
        {"name": "cls", "arch": f"{HERE}:TinyNet", "num_classes": 5},
        {
            "name": "any",
            "arch": f"{HERE}:build_any",
            "num_classes": 2,
            "kwargs": {"width": 6},
        },
    ]
    tables = [{**t, "input_size": [8, 8]} for t in tables]
    CALLS.clear()
    with serve_in_thread(parse_config({"models": tables}, tmp_path), "127.0.0.1:0") as server:
        # Each builder once: build_tiny without num_classes (its signature has none), the
        # class and the **kwargs function with it (the class's call comes through build_any).
        assert CALLS == [
            ("build_tiny", {"width": 4, "weights": None}),
            ("TinyNet", {"num_classes": 3, "width": 4}),
            ("TinyNet", {"num_classes": 5, "width": 4}),
            ("build_any", {"width": 6, "num_classes": 2}),
            ("TinyNet", {"num_classes": 2, "width": 6}),
        ]
        x = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
        with deepvis.Client(server.bound_address, timeout=30) as client:
            for name, classes in (("fn", 3), ("cls", 5), ("any", 2)):
                result = client.explain(x, model=name, method="saliency", render=False)
                assert len(result.predictions) == classes
                assert result.array is not None and result.array.shape == (3, 8, 8)
                module = server.engine.models[name].module
                with torch.no_grad():
                    expected = int(module(torch.from_numpy(x)[None]).argmax())
                assert result.target == expected
    assert len(CALLS) == 5  # serving built nothing more


def test_a_builder_must_build_a_module_and_may_not_end_the_server(tmp_path) -> None:
    CALLS.clear()
    cases = [
        (f"{HERE}:build_nothing", "build_nothing returned int, not an nn.Module"),
        (f"{HERE}:build_and_exit", "raised SystemExit while building the model"),
        ("collections:OrderedDict", "class collections.OrderedDict is not an nn.Module subclass"),
        (f"{HERE}:CALLS", "'CALLS' is a list, not an nn.Module subclass"),
        (f"{HERE}:nope", f"module '{re.escape(HERE)}' has no 'nope'"),
        ("no_such_module_xyz:Net", "cannot import module 'no_such_module_xyz'"),
    ]
    for arch, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_model(_spec(tmp_path, arch=arch), CPU)
    assert CALLS == [("build_nothing", {"num_classes": 3}), ("build_and_exit", {"num_classes": 3})]


REFUSED_ARCHS = {
    "getpid": ("os:getpid", "'getpid' is a builtin"),
    "print": ("builtins:print", "'print' is a builtin"),
    "quit": ("builtins:exit", "'exit' is a Quitter"),
    "sys-exit": ("sys:exit", "'exit' is a builtin"),
}


def test_an_arch_that_is_no_builder_is_refused_and_the_server_exits_2(tmp_path) -> None:
    cfg = tmp_path / "callables.toml"
    cfg.write_text(
        "".join(
            f'[[models]]\nname = "{name}"\narch = "{arch}"\nnum_classes = 2\n'
            "input_size = [8, 8]\n\n"
            for name, (arch, _) in REFUSED_ARCHS.items()
        )
    )
    proc = _server_process("--config", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""  # print() never ran: it would have written an empty line
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("ConfigError")]
    assert error.startswith("ConfigError: no model could be loaded: ")
    for name, (arch, kind) in REFUSED_ARCHS.items():
        assert f"model '{name}': arch '{arch}': {kind}" in error, error
    assert error.count("not an nn.Module subclass or a Python function that returns one") == 4


# --- What clients hear of a model that failed to load ------------------------------------


def test_a_refused_weights_file_is_explained_without_server_paths(layout, tmp_path) -> None:
    cfg = tmp_path / "mixed.toml"
    root = layout["root"]
    cfg.write_text(
        f'[server]\nmodel_root = "{root}"\nlog_format = "json"\n\n'
        + "".join(
            f'[[models]]\nname = "{name}"\narch = "{DIGITS.arch}"\nweights = "{root / file}"\n'
            "num_classes = 10\nchannels = 1\ninput_size = [32, 32]\n\n"
            for name, file in (("good", "digits.safetensors"), ("evil", "evil.pt"))
        )
    )
    with ServerProcess("--device", "cpu", "--config", str(cfg)) as server:
        with deepvis.Client(server.address, timeout=30) as client:
            with pytest.raises(deepvis.Unavailable) as info:
                client.explain(np.zeros((32, 32), np.uint8), model="evil")
            assert client.health(model_health_service("evil")) == "NOT_SERVING"
        assert server.stop(timeout=60) == 0, server.log()
        records = [json.loads(line) for line in server.log().splitlines()]
    details = info.value.details
    assert details == REFUSED_PICKLE
    assert "/" not in details and "torch" not in details.lower()
    (failed,) = [r for r in records if r["level"] == "ERROR"]
    assert failed["logger"] == "deepvis_server.engine"
    assert (
        f"model evil failed to load, not serving it: {root / 'evil.pt'}: refused"
        in (failed["message"])
    )
    assert not layout["marker"].exists()
