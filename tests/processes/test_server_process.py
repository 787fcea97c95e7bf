"""ServerProcess, which every test, benchmark and script here starts servers with: the
address it reads back from port 0, and what it says when a server never serves."""

from __future__ import annotations

import pytest

import deepvis
from deepvis_server.process import ServerDidNotStart, ServerProcess


def test_port_zero_is_read_back_and_stop_gives_the_exit_code(tmp_path) -> None:
    log = tmp_path / "server.log"
    with ServerProcess("--log-level", "INFO", log=log) as server:
        assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"
        assert server.serving_line.endswith(f"on {server.address} (plaintext)")
        with deepvis.Client(server.address, timeout=30) as client:
            assert client.health() == "SERVING"
        assert server.alive() and server.rss_bytes() > 10 * 2**20
        assert server.stop() == 0 and not server.alive()
    assert "shutting down" in log.read_text() and server.log() == log.read_text()


def test_a_server_that_exits_before_serving_is_reported_with_its_log(tmp_path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[[models]\n")
    with pytest.raises(ServerDidNotStart) as info:
        ServerProcess("--config", str(cfg))
    assert info.value.code == 2
    assert "exited with 2 before serving" in str(info.value)
    assert "ConfigError:" in info.value.log and "invalid TOML" in str(info.value)


def test_a_server_that_does_not_serve_in_time_is_killed() -> None:
    with pytest.raises(ServerDidNotStart, match=r"killed after 0.5 s without serving") as info:
        ServerProcess(timeout=0.5)
    assert info.value.code == -9
