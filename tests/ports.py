"""A free TCP port on the loopback, for the listeners a test must name a port for in advance.

gRPC servers bind port 0 and say which port they got (`serve_in_thread(config, "HOST:0")`
then `bound_address`; `ServerProcess` reads it from the "serving" line). This is for the
rest: /metrics on a configured `metrics_port` (the tests check that port is the one used, and
a server process does not report it), and `--workers`, whose processes share one fixed port.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
