"""Several replicas behind one client: address forms, gRPC's round_robin, and a replica that is
SIGKILLed under load while every request still completes with the right result."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

import deepvis
from deepvis._cli import main
from deepvis._transport import SERVICE_CONFIG, channel_options, channel_target
from deepvis.v1 import deepvis_pb2, deepvis_pb2_grpc
from deepvis_server.config import load_config
from deepvis_server.process import ServerProcess
from deepvis_server.server import serve_in_thread
from oracles import relative_error

from .fakes import serving

# --- address forms and the service config (no server) --------------------------------------


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("localhost:50051", "localhost:50051"),
        ("server:50051", "server:50051"),
        ("[::1]:50051", "[::1]:50051"),
        (" 127.0.0.1:50051 ", "127.0.0.1:50051"),
        ("127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        ("10.0.0.1:1, 10.0.0.2:2 ,10.0.0.3:3,", "ipv4:10.0.0.1:1,10.0.0.2:2,10.0.0.3:3"),
        (["127.0.0.1:5001", "127.0.0.1:5002"], "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        (("127.0.0.1:5001",), "127.0.0.1:5001"),
        ("[::1]:5001,[::1]:5002", "ipv6:[::1]:5001,[::1]:5002"),
        ("dns:///server:50051", "dns:///server:50051"),
        ("dns:server:50051", "dns:server:50051"),
        ("ipv4:127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        ("ipv6:[::1]:5001,[::1]:5002", "ipv6:[::1]:5001,[::1]:5002"),
        ("unix:///run/deepvis.sock", "unix:///run/deepvis.sock"),
        ("xds:///deepvis", "xds:///deepvis"),
    ],
)
def test_address_forms_map_to_grpc_targets(address, target) -> None:
    assert channel_target(address) == target


@pytest.mark.parametrize(
    ("address", "error", "match"),
    [
        ("", ValueError, "no server address"),
        (" , ", ValueError, "no server address"),
        ([], ValueError, "no server address"),
        ("server-a:1,server-b:2", ValueError, "dns:///"),
        ("127.0.0.1:1,[::1]:2", ValueError, "all IPv4 or all IPv6"),
        ("127.0.0.1,127.0.0.1:2", ValueError, "host:port"),
        ("127.0.0.1:1,127.0.0.1:0", ValueError, "host:port"),
        ("127.0.0.1:1,127.0.0.1:http", ValueError, "host:port"),
        (b"127.0.0.1:1", TypeError, "str"),
        (50051, TypeError, "str"),
        ([50051], TypeError, "str"),
    ],
)
def test_bad_address_forms_are_refused_before_any_channel(address, error, match) -> None:
    with pytest.raises(error, match=match):
        channel_target(address)
    with pytest.raises(error, match=match):
        deepvis.Client(address)


def test_service_config_balances_round_robin_and_retries_unavailable() -> None:
    options = dict(channel_options(1 << 20, None))
    config = json.loads(options["grpc.service_config"])
    assert config == SERVICE_CONFIG
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "deepvis.v1.Explainer"}]
    policy = method["retryPolicy"]
    assert policy["maxAttempts"] == 5 and policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["initialBackoff"] == "0.05s" and policy["maxBackoff"] == "1s"
    assert policy["backoffMultiplier"] == 2
    assert options["grpc.enable_retries"] == 1
    # A request up to the message limit can be replayed.
    assert options["grpc.per_rpc_retry_buffer_size"] > 1 << 20
    # The caller's options still win.
    mine = dict(channel_options(1 << 20, [("grpc.service_config", "{}")]))
    assert mine["grpc.service_config"] == "{}"


@pytest.mark.parametrize(
    ("target", "authority"),
    [
        ("ipv4:127.0.0.1:5001,127.0.0.1:5002", "127.0.0.1:5001"),
        ("ipv6:[::1]:5001,[::1]:5002", "[::1]:5001"),
        ("127.0.0.1:5001", None),
        ("ipv4:127.0.0.1:5001", None),
        ("dns:///server:50051", None),
    ],
)
def test_a_list_of_addresses_has_its_first_as_authority(target, authority) -> None:
    # gRPC's default would be the whole list, which no certificate names.
    options = dict(channel_options(1 << 20, None, target))
    assert options.get("grpc.default_authority") == authority
    mine = dict(channel_options(1 << 20, [("grpc.default_authority", "deepvis")], target))
    assert mine["grpc.default_authority"] == "deepvis"


def test_every_form_opens_a_channel_with_every_option() -> None:
    # The channel connects lazily: this checks that gRPC accepts the target and options.
    for address in ("127.0.0.1:1,127.0.0.1:2", "dns:///localhost:1", ["127.0.0.1:1"]):
        with deepvis.Client(address, timeout=1, token="t0ken", max_message_bytes=1 << 20) as client:
            assert channel_target(address) in repr(client)
        with deepvis.Client(address, tls=True, token="t0ken"):
            pass


def test_unreachable_replicas_fail_quickly_with_unavailable() -> None:
    # All down: the retries back off (0.05 s, 0.1 s, ... jittered) and give up, still fast.
    dead = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"  # nothing listens on ports 1 to 3
    with deepvis.Client(dead, timeout=20) as client:
        t0 = time.monotonic()
        with pytest.raises(deepvis.Unavailable):
            client.models()
        assert time.monotonic() - t0 < 10


# --- replays, against an in-process fake server ---------------------------------------------


class Flaky(deepvis_pb2_grpc.ExplainerServicer):
    """Fails the first `failures` calls of each kind with `code`, 50 ms after sending headers (as
    a deepvis server does) or without any (trailers only: what gRPC's own retry policy sees)."""

    def __init__(self, failures: int, code=grpc.StatusCode.UNAVAILABLE, headers=True) -> None:
        self.failures, self.code, self.headers = failures, code, headers
        self.calls = {"ListModels": 0, "Visualize": 0}

    def _fail(self, kind: str, context: grpc.ServicerContext) -> bool:
        self.calls[kind] += 1
        if self.calls[kind] > self.failures:
            return False
        if self.headers:
            context.send_initial_metadata((("x-request-id", f"r{self.calls[kind]}"),))
            # A replica fails some time after the headers (it was computing), not in the same
            # breath: back to back, a loaded client can read headers and status together,
            # which gRPC's retry filter takes as a Trailers-Only answer.
            time.sleep(0.05)
        context.abort(self.code, "replica going away")
        return True

    def ListModels(self, request, context):
        self._fail("ListModels", context)
        return deepvis_pb2.ListModelsResponse(models=[deepvis_pb2.ModelInfo(name="m")])

    def Visualize(self, request, context):
        self._fail("Visualize", context)
        pixels = deepvis_pb2.Tensor(
            dtype=deepvis_pb2.DTYPE_FLOAT32, shape=[1, 1, 1, 1], data=bytes(4)
        )
        yield deepvis_pb2.VisualizeResponse(result=deepvis_pb2.VisualizeResult(array=pixels))


@pytest.fixture()
def flaky() -> Iterator[tuple[str, list[Flaky]]]:
    holder: list[Flaky] = []

    class Delegate(deepvis_pb2_grpc.ExplainerServicer):
        def ListModels(self, request, context):
            return holder[0].ListModels(request, context)

        def Visualize(self, request, context):
            yield from holder[0].Visualize(request, context)

    with serving(Delegate(), workers=4) as address:
        yield address, holder


@pytest.mark.parametrize("headers", [True, False])
def test_unavailable_is_replayed_up_to_five_attempts_in_all(flaky, headers) -> None:
    address, holder = flaky
    holder[:] = [Flaky(4, headers=headers)]
    with deepvis.Client(address, timeout=10) as client:
        assert [m.name for m in client.models()] == ["m"]
    assert holder[0].calls["ListModels"] == 5
    # Five failures: the fifth is the caller's; not 5 x 5 attempts when gRPC retries too.
    holder[:] = [Flaky(99, headers=headers)]
    with deepvis.Client(address, timeout=10) as client:
        with pytest.raises(deepvis.Unavailable, match="going away"):
            client.models()
    assert holder[0].calls["ListModels"] == 5


def test_other_errors_and_spent_deadlines_are_not_replayed(flaky) -> None:
    address, holder = flaky
    holder[:] = [Flaky(1, code=grpc.StatusCode.INVALID_ARGUMENT)]
    with deepvis.Client(address, timeout=10) as client:
        with pytest.raises(deepvis.InvalidArgument):
            client.models()
    assert holder[0].calls["ListModels"] == 1
    holder[:] = [Flaky(99)]
    with deepvis.Client(address, timeout=0.02) as client:
        with pytest.raises((deepvis.Unavailable, deepvis.DeadlineExceeded)):
            client.models()
    assert holder[0].calls["ListModels"] < 5


def test_async_client_replays_too(flaky) -> None:
    address, holder = flaky

    async def run() -> None:
        holder[:] = [Flaky(3)]
        async with deepvis.AsyncClient(address, timeout=10) as client:
            assert [m.name for m in await client.models()] == ["m"]
            vis = await client.visualize(1, model="m", steps=1)
            assert vis.array.shape == (1, 1, 1, 1)
        assert holder[0].calls == {"ListModels": 4, "Visualize": 4}

    asyncio.run(run())


def test_visualize_is_replayed_only_before_its_first_message(flaky) -> None:
    address, holder = flaky
    holder[:] = [Flaky(2)]
    with deepvis.Client(address, timeout=10) as client:
        client.visualize(1, model="m", steps=1)
    assert holder[0].calls["Visualize"] == 3

    class FailsAfterProgress(Flaky):
        def Visualize(self, request, context):
            self.calls["Visualize"] += 1
            yield deepvis_pb2.VisualizeResponse(progress=deepvis_pb2.VisualizeProgress(step=1))
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")

    holder[:] = [FailsAfterProgress(0)]
    seen: list[deepvis.Progress] = []
    with deepvis.Client(address, timeout=10) as client:
        with pytest.raises(deepvis.Unavailable):
            client.visualize(1, model="m", steps=1, on_progress=seen.append)
    assert holder[0].calls["Visualize"] == 1 and len(seen) == 1


# --- TLS, tokens and the CLI with a list of replicas ----------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_token_and_cli_work_with_a_list_of_replicas(tmp_path, sample_paths) -> None:
    from pki import tls_and_token

    config = load_config()
    access = tls_and_token(config.access, tmp_path, "s3cret-token")
    config = replace(config, access=access)
    ca = (tmp_path / "ca.pem").read_bytes()
    with (
        serve_in_thread(config, "127.0.0.1:0") as a,
        serve_in_thread(config, "127.0.0.1:0") as b,
    ):
        address = f"{a.bound_address},{b.bound_address}"
        before = [s.engine.batchers["digits"].computed_items for s in (a, b)]
        with deepvis.Client(
            address, timeout=30, token="s3cret-token", root_certificates=ca
        ) as client:
            for _ in range(6):
                assert client.explain(str(sample_paths[7])).target == 7
        after = [s.engine.batchers["digits"].computed_items for s in (a, b)]
        assert all(x > y for x, y in zip(after, before, strict=True)), (before, after)
        with deepvis.Client(address, timeout=30, root_certificates=ca) as client:
            with pytest.raises(deepvis.Unauthenticated):
                client.models()

        async def run() -> int:
            async with deepvis.AsyncClient(
                [a.bound_address, b.bound_address],
                timeout=30,
                token="s3cret-token",
                root_certificates=ca,
            ) as client:
                results = await asyncio.gather(*(client.explain(str(p)) for p in sample_paths[:4]))
                return sum(r.target == i for i, r in enumerate(results))

        assert asyncio.run(run()) == 4
        tls = ["--tls-ca", str(tmp_path / "ca.pem"), "--token", "s3cret-token"]
        assert main(["health", "--server", address, *tls]) == 0
        assert main(["--server", f"ipv4:{address}", *tls, "health"]) == 0
        assert main(["health", "--server", f"dns:///localhost:{a.port}", *tls]) == 0


# --- three real server processes -----------------------------------------------------------


def replica() -> ServerProcess:
    """A `deepvis-server` process on the embedded digits model, started, not yet waited for."""
    return ServerProcess(
        "--device", "cpu", "--log-level", "INFO",
        env={"OMP_NUM_THREADS": "1"}, timeout=45, wait=False,
    )  # fmt: skip


def explained(server: ServerProcess) -> int:
    """Explain calls the replica answered, from its access log."""
    return sum("Explain OK" in line for line in server.log().splitlines())


@pytest.fixture()
def replicas() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        started = [replica() for _ in range(3)]  # start up side by side
        for r in started:
            r.wait_serving()
        yield started
    finally:
        for r in started:
            r.kill()


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_round_robin_spreads_and_a_replica_killed_under_load_loses_no_request(
    replicas: list[ServerProcess], sample_paths: list[Path]
) -> None:
    assert len(sample_paths) == 10
    samples = [str(p) for p in sample_paths]
    targets = [(i, (i + 3) % 10) for i in range(10)]  # (sample, class to explain)
    with deepvis.Client(replicas[0].address, timeout=30) as one:
        expected = {
            (i, t): one.explain(samples[i], target=t, render=False).array for i, t in targets
        }
    assert wait_for(lambda: [explained(r) for r in replicas] == [10, 0, 0])

    address = ",".join(r.address for r in replicas)
    with deepvis.Client(address, timeout=30) as client:
        # Round robin: every replica takes a share of sequential calls.
        client.models()
        for k in range(30):
            i, t = targets[k % 10]
            res = client.explain(samples[i], target=t, render=False)
            assert relative_error(res.array, expected[(i, t)]) < 1e-5
        assert wait_for(lambda: sum(explained(r) for r in replicas) == 40)
        shares = [explained(r) - b for r, b in zip(replicas, [10, 0, 0], strict=True)]
        assert all(s >= 3 for s in shares), shares

        # Load from 8 threads; one replica is SIGKILLed with calls in flight on it.
        threads, per_thread = 8, 40
        done = 0
        lock = threading.Lock()
        failures: list[BaseException] = []
        wrong: list[tuple[int, int, float]] = []

        def work(n: int) -> None:
            nonlocal done
            for k in range(per_thread):
                i, t = targets[(n + k) % 10]
                try:
                    res = client.explain(samples[i], target=t, render=False)
                except BaseException as e:  # noqa: BLE001 - every failure is the finding
                    failures.append(e)
                    continue
                err = relative_error(res.array, expected[(i, t)])
                if err >= 1e-5 or res.target != t:
                    wrong.append((i, t, err))
                with lock:
                    done += 1

        victim = replicas[1]
        before_kill = explained(victim)
        pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for th in pool:
            th.start()
        assert wait_for(lambda: done >= threads * per_thread // 3, timeout=40)
        victim.kill()
        killed_at = done
        for th in pool:
            th.join(timeout=50)
        assert not any(th.is_alive() for th in pool)
        assert failures == [], failures[:3]
        assert wrong == []
        assert done == threads * per_thread
        # It did serve its share of the load before it died, and the rest still came after.
        assert explained(victim) > before_kill
        assert killed_at < threads * per_thread

        # One replica left: calls still succeed (the retry policy steps over the dead ones).
        replicas[0].kill()
        time.sleep(0.5)  # the access lines of the load are all in
        last = explained(replicas[2])
        for k in range(10):
            i, t = targets[k]
            assert (
                relative_error(
                    client.explain(samples[i], target=t, render=False).array,
                    expected[(i, t)],
                )
                < 1e-5
            )
        assert wait_for(lambda: explained(replicas[2]) == last + 10)
