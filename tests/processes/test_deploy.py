"""The deployment files (no Docker, no cluster): the Compose file against the Compose
Specification's schema, the Kubernetes manifests, the Dockerfile's commands against the
real argument parsers, and the example configurations against the real config loader."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deepvis_server.config import DEFAULT_CONFIG, DEFAULT_MODEL_DIR, load_config, parse_config

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) parses the deployment files")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = Path(__file__).resolve().parents[3] / "shared/data/compose-spec.json"
DEPLOY = ROOT / "deploy"
DEPLOY_CONFIG = DEPLOY / "config" / "deepvis.toml"
IMAGE_MODEL_DIR = "/opt/deepvis/default_model"  # where the Dockerfile links the digits model
CONFIG_IN_IMAGE = "/etc/deepvis/deepvis.toml"


# Safe loading plus Compose's `!reset` merge tag (it removes a key in an override file).
_ComposeLoader: Any = type("_ComposeLoader", (yaml.SafeLoader,), {})
_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def _load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# ---------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # comments inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _instr(name: str) -> list[str]:
    return [args for word, args in _dockerfile() if word == name]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _healthcheck_argv(args: str) -> list[str]:
    """The command of a HEALTHCHECK instruction's `CMD [...]` (exec form)."""
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
    assert m, f"HEALTHCHECK needs an exec-form CMD: {args}"
    return _exec_form(m.group(1))


def _server_argv() -> list[str]:
    (entrypoint,) = _instr("ENTRYPOINT")
    (cmd,) = _instr("CMD")
    return _exec_form(entrypoint) + _exec_form(cmd)


def test_dockerfile_base_torch_index_and_install_order() -> None:
    assert _instr("FROM") == ["python:3.11-slim"]
    (arg,) = [a for a in _instr("ARG") if a.startswith("TORCH_INDEX")]
    assert arg == "TORCH_INDEX=https://download.pytorch.org/whl/cpu"
    runs = _instr("RUN")
    torch_at = next(i for i, r in enumerate(runs) if "--index-url" in r)
    assert '"${TORCH_INDEX}"' in runs[torch_at] and "torch" in runs[torch_at]
    assert "torchvision" in runs[torch_at]
    server_at = next(i for i, r in enumerate(runs) if '".[server]"' in r or "'.[server]'" in r)
    assert torch_at < server_at, "torch must come from TORCH_INDEX before '.[server]'"
    # The example configurations name the digits model by this link.
    assert IMAGE_MODEL_DIR in runs[server_at]


def test_dockerfile_runs_as_a_fixed_non_root_uid() -> None:
    users = _instr("USER")
    assert users, "the image must not run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: a numeric non-root uid"
    assert not group or (group.isdigit() and int(group) != 0)
    # Every instruction after the last USER runs unprivileged: no RUN may follow it.
    steps = [w for w, _ in _dockerfile()]
    assert "RUN" not in steps[len(steps) - 1 - steps[::-1].index("USER") :]


def test_dockerfile_ports_entrypoint_and_healthcheck() -> None:
    exposed = " ".join(_instr("EXPOSE")).split()
    assert {"50051", "9100"} <= set(exposed)
    assert _exec_form(_instr("ENTRYPOINT")[0]) == ["deepvis-server"]
    (health,) = _instr("HEALTHCHECK")
    argv = _healthcheck_argv(health)
    assert argv[:2] == ["deepvis", "health"]
    assert argv[argv.index("--server") + 1] == "127.0.0.1:50051"


def test_dockerfile_cmd_flags_are_the_servers() -> None:
    argv = _server_argv()
    assert argv[0] == "deepvis-server"
    flags = [a for a in argv[1:] if a.startswith("--")]
    assert {"--config", "--address", "--allow-insecure-remote"} <= set(flags)
    help_text = subprocess.run(
        [sys.executable, "-m", "deepvis_server", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), flag
    from deepvis_server.__main__ import parse_args

    args = parse_args(argv[1:])  # values too, not only the names
    assert args.config == CONFIG_IN_IMAGE and args.address == "0.0.0.0:50051"


def test_dockerfile_cmd_starts_with_the_example_config() -> None:
    """The image's CMD with deploy/config/deepvis.toml passes the listener check that
    refuses plaintext on 0.0.0.0 (the server would otherwise exit 2 at start)."""
    from deepvis_server.__main__ import apply_overrides, parse_args
    from deepvis_server.security import check_listen_address

    args = parse_args(_server_argv()[1:])
    config = apply_overrides(load_config(DEPLOY_CONFIG), args)
    assert config.access.allow_insecure_remote
    check_listen_address(
        args.address, tls=config.access.tls_cert is not None, allow_insecure_remote=True
    )


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "out", "bench/results"} <= ignored
    assert any("__pycache__" in p for p in ignored)
    copied = [
        src for args in _instr("COPY") for src in args.split()[:-1] if not src.startswith("--")
    ]
    assert copied
    for src in copied:
        assert src not in ignored and (ROOT / src).exists(), src


# ---------------------------------------------------------------- Compose


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"the Compose Specification schema is not at {COMPOSE_SCHEMA}")
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )
    override = _load_yaml(DEPLOY / "compose.cpu.yml")
    errors = list(validator.iter_errors(override))
    assert not errors, [e.message for e in errors]


def test_compose_server_reserves_a_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["server"]["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d["capabilities"]]
    assert len(gpus) == 1
    assert gpus[0].get("count") in (1, "all") or gpus[0].get("device_ids")
    assert compose["services"]["server"]["build"]["args"]["TORCH_INDEX"].endswith("cu124}")


def test_compose_cpu_override_drops_the_reservation() -> None:
    override = _load_yaml(DEPLOY / "compose.cpu.yml")
    server = override["services"]["server"]
    assert "deploy" in server and server["deploy"] is None  # `!reset`
    assert server["build"]["args"]["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert override["services"]["client"]["image"] == server["image"]


def test_compose_healthcheck_is_deepvis_health(compose: dict[str, Any]) -> None:
    test = compose["services"]["server"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:3] == ["deepvis", "health"]
    assert test[test.index("--server") + 1] == "127.0.0.1:50051"
    # The same check as the image's own.
    assert test[1:] == _healthcheck_argv(_instr("HEALTHCHECK")[0])
    from deepvis._cli import _build_parser

    args = _build_parser().parse_args(test[2:])
    assert args.command == "health" and args.server == "127.0.0.1:50051"


def test_compose_volumes_are_read_only(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["server"]["volumes"]
    assert set(volumes) == {"./deploy/models:/models:ro", "./deploy/config:/etc/deepvis:ro"}
    for volume in volumes:
        assert (ROOT / volume.split(":")[0]).is_dir(), volume
    assert (DEPLOY / "config" / Path(CONFIG_IN_IMAGE).name).is_file()


def _published(port: Any) -> tuple[str | None, str]:
    """(published host port or None, container port) of a Compose `ports` entry."""
    if isinstance(port, dict):
        published = port.get("published")
        return (None if published in (None, "") else str(published)), str(port["target"])
    if isinstance(port, int):
        return None, str(port)
    spec = str(port).split("/")[0]
    parts = spec.rsplit(":", 2) if spec.count(":") <= 2 else [spec]
    container = parts[-1]
    host = parts[-2] if len(parts) >= 2 else ""
    return (host or None), container


def test_compose_server_scales(compose: dict[str, Any]) -> None:
    server = compose["services"]["server"]
    assert "container_name" not in server  # a fixed name forbids a second replica
    assert "50051" in {str(p) for p in server["expose"]}
    for port in server.get("ports", []):
        host, container = _published(port)
        assert host is None, f"a fixed host port ({port}) would stop --scale at replica 2"
    assert all(_published(p)[1] != "50051" for p in server.get("ports", [])), (
        "gRPC stays inside the compose network"
    )
    metrics = load_config(DEPLOY_CONFIG).observability.metrics_port
    assert str(metrics) in {str(p) for p in server["expose"]}


def test_compose_client_balances_over_healthy_servers(compose: dict[str, Any]) -> None:
    client = compose["services"]["client"]
    assert client["entrypoint"] == ["deepvis"]
    command = client["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    assert command[command.index("--server") + 1] == "dns:///server:50051"
    assert client["depends_on"]["server"]["condition"] == "service_healthy"
    assert client["image"] == compose["services"]["server"]["image"]
    from deepvis._cli import _build_parser

    assert _build_parser().parse_args(command).server == "dns:///server:50051"


# ---------------------------------------------------------------- configuration


def _digits_in_image_paths(config: Any) -> Any:
    """The config's digits model with the image's paths mapped to this checkout's."""
    (digits,) = [m for m in config.models if m.name == "digits"]
    for path in (digits.weights, digits.labels):
        assert str(path).startswith(IMAGE_MODEL_DIR + "/"), path
    return replace(
        digits,
        weights=DEFAULT_MODEL_DIR / digits.weights.name,
        labels=DEFAULT_MODEL_DIR / digits.labels.name,
    )


def test_example_config_serves_the_embedded_digits_model() -> None:
    config = load_config(DEPLOY_CONFIG)
    obs = config.observability
    assert obs.metrics_port == 9100 and obs.metrics_address == "0.0.0.0"
    digits = _digits_in_image_paths(config)
    assert digits.weights.is_file() and digits.labels.is_file()
    (embedded,) = load_config(DEFAULT_CONFIG).models
    assert digits == embedded  # same architecture, preprocessing and files as the default


def test_k8s_configmap_matches_the_compose_config(k8s: list[dict[str, Any]]) -> None:
    cm = _one(k8s, "ConfigMap")
    text = cm["data"][Path(CONFIG_IN_IMAGE).name]
    from_cm = parse_config(tomllib.loads(text), Path(CONFIG_IN_IMAGE).parent)
    assert from_cm == load_config(DEPLOY_CONFIG)  # `source` is not compared


# ---------------------------------------------------------------- Kubernetes


def test_k8s_manifests_kinds(k8s: list[dict[str, Any]]) -> None:
    kinds = [d["kind"] for d in k8s]
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= set(kinds)
    for doc in k8s:
        assert doc.get("apiVersion") and doc["metadata"].get("name"), doc
        assert "namespace" not in doc["metadata"], "namespaces come from kubectl -n"


def _container(k8s: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(k8s, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_k8s_deployment_probes_are_grpc(k8s: list[dict[str, Any]]) -> None:
    container = _container(k8s)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
        assert "exec" not in container[probe] and "httpGet" not in container[probe]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9100}


def test_k8s_deployment_is_non_root_read_only_with_a_gpu(k8s: list[dict[str, Any]]) -> None:
    deployment = _one(k8s, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(k8s)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    # The image's uid: the Dockerfile's USER.
    assert str(pod["securityContext"]["runAsUser"]) == _instr("USER")[-1].partition(":")[0]


def test_k8s_deployment_mounts_config_and_models(k8s: list[dict[str, Any]]) -> None:
    pod = _one(k8s, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _container(k8s)["volumeMounts"]}
    config_mount = mounts[str(Path(CONFIG_IN_IMAGE).parent)]
    models_mount = mounts["/models"]
    assert config_mount["readOnly"] is True and models_mount["readOnly"] is True
    cm = _one(k8s, "ConfigMap")
    assert volumes[config_mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert Path(CONFIG_IN_IMAGE).name in cm["data"]
    claim = volumes[models_mount["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = _one(k8s, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]]
    from deepvis_server.__main__ import parse_args

    args = parse_args(_container(k8s)["args"])
    assert args.config == CONFIG_IN_IMAGE


def test_k8s_headless_service_selects_the_pods(k8s: list[dict[str, Any]]) -> None:
    deployment = _one(k8s, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = [d for d in k8s if d["kind"] == "Service"]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1, "client-side balancing needs a headless Service"
    (svc,) = headless
    assert svc["spec"]["selector"].items() <= labels.items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [50051]
    metrics = [s for s in services if any(p["port"] == 9100 for p in s["spec"]["ports"])]
    assert metrics and metrics[0]["spec"]["selector"].items() <= labels.items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9100"


def test_k8s_hpa_scales_on_queue_depth(k8s: list[dict[str, Any]]) -> None:
    hpa = _one(k8s, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        _one(k8s, "Deployment")["metadata"]["name"],
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "deepvis_queue_depth"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert float(metric["pods"]["target"]["averageValue"]) > 0
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == "deepvis_queue_depth"
    assert "deepvis_queue_depth" in rule["seriesQuery"]


def test_deploy_readme_is_short() -> None:
    assert len((DEPLOY / "README.md").read_text().splitlines()) <= 60
