"""The batching policy: scripted closed-loop clients on a simulated clock, and the batcher itself
on a gated device.

Closed-loop clients send their next request as soon as the last one is answered. Under the
fixed policy (an explicit max_delay_ms) 16 of them lock into batches of 4, 12, 4, 12, ...; the
adaptive policy (the default) converges to one batch of 16 from that same start.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import torch

from deepvis_server.batch_policy import FOLLOW_CAP_S, GATHER_S, BatchPolicy
from deepvis_server.batcher import Batcher, WorkItem
from deepvis_server.config import load_config
from deepvis_server.methods import REGISTRY, MethodRequest
from deepvis_server.models import load_model

pytestmark = pytest.mark.fast

RTT_S = 0.001  # from an answer to the client's next request


def compute_s(n: int) -> float:
    """A device whose batch costs 10 ms plus 4 ms an item (about what a CPU gives resnet18)."""
    return 0.010 + 0.004 * n


def simulate(
    policy: BatchPolicy, starts: Sequence[float], batches: int
) -> tuple[list[int], list[float]]:
    """Runs closed-loop clients (the first request of each at `starts`) against `policy` on a
    simulated clock, as the batcher's loop runs it: while the device is free, ask the policy;
    send when it says 0, else wait for the next arrival or the end of its wait. Returns the
    batch sizes and every request's wait from arrival to its batch's start."""
    arrivals = sorted(starts)  # pending arrival times of requests not yet queued
    queue: list[float] = []  # arrival times of queued requests
    now, sizes, waits = 0.0, list[int](), list[float]()
    while len(sizes) < batches:
        while arrivals and arrivals[0] <= now:
            queue.append(arrivals.pop(0))
        if not queue:
            now = arrivals[0]
            continue
        wait = policy.wants_more(now, len(queue), queue[0], None, queue[-1])
        if wait > 0:
            until = now + wait
            now = min(until, arrivals[0]) if arrivals else until
            continue
        batch = queue[: policy.max_batch_size]
        del queue[: policy.max_batch_size]
        sizes.append(len(batch))
        waits += [now - t for t in batch]
        done = now + compute_s(len(batch))
        # The batch's clients come back after their round trip; the rest arrive meanwhile.
        arrivals = sorted(arrivals + [done + RTT_S] * len(batch))
        while arrivals and arrivals[0] <= done:
            queue.append(arrivals.pop(0))
        now = done
        policy.ran(len(batch), len(queue), compute_s(len(batch)), now)
    return sizes, waits


# 4 clients start together; 12 more join while the first batch computes: the phase that locks.
PHASED = [0.0] * 4 + [0.012] * 12


def test_the_old_default_delay_locks_16_clients_into_4_12_phases() -> None:
    sizes, _ = simulate(BatchPolicy(32, fixed_delay_s=0.005), PHASED, 40)
    assert sizes == [4, 12] * 20, sizes


def test_the_adaptive_policy_converges_to_one_batch_per_cycle() -> None:
    sizes, _ = simulate(BatchPolicy(32), PHASED, 40)
    assert sizes[-30:] == [16] * 30, sizes
    # ... capped at max_batch_size, from any start.
    sizes, _ = simulate(BatchPolicy(8), [0.001 * i for i in range(16)], 40)
    assert sizes[-30:] == [8] * 30, sizes
    sizes, _ = simulate(BatchPolicy(32), [0.0] + [0.011] * 3 + [0.017] * 5, 40)
    assert sizes[-30:] == [9] * 30, sizes


def test_the_adaptive_policy_bounds_what_it_waits_for() -> None:
    policy = BatchPolicy(32)
    # An idle device: a lone request waits only the gathering window.
    assert policy.wants_more(10.0, 1, 10.0, None) == pytest.approx(GATHER_S)
    # After a batch of 12 that took 0.12 s, with 4 queued: wait for the 12 to come back, for
    # half the compute time at most, never past the oldest request's deadline.
    policy.ran(12, 4, 0.12, now=20.0)
    assert policy.expected == 16
    assert policy.wants_more(20.0, 4, 19.9, None) == pytest.approx(0.06)
    assert policy.wants_more(20.0, 4, 19.9, 20.02) == pytest.approx(0.019)
    assert policy.wants_more(20.0, 16, 19.9, None) == 0.0  # they came back: go
    assert policy.wants_more(20.07, 4, 19.9, None) == 0.0  # the wait is over
    policy.ran(12, 4, 2.0, now=30.0)  # however slow the batch, the wait stays capped
    assert policy.wants_more(30.0, 4, 29.0, None) == pytest.approx(FOLLOW_CAP_S)
    # Clients that went away cost that wait once: the next expectation is what came.
    policy.ran(4, 0, 0.2, now=40.0)
    assert policy.expected == 4
    policy.ran(1, 0, 0.2, now=41.0)
    assert policy.wants_more(50.0, 1, 50.0, None) == pytest.approx(GATHER_S)
    # Full batches leave at once under either policy.
    assert BatchPolicy(8, fixed_delay_s=1.0).wants_more(0.0, 8, 0.0, None) == 0.0


# After a cycle of 16 clients and an idle spell, the 16 start again 1.5 ms apart: 22.5 ms from
# the first to the last, longer than the gathering window.
BURST = [10.0 + 0.0015 * i for i in range(16)]


def after_a_cycle_of_16(policy: BatchPolicy) -> BatchPolicy:
    policy.ran(16, 0, compute_s(16), now=0.0)
    return policy


def test_a_burst_on_an_idle_device_leaves_as_one_batch() -> None:
    # A window counted from the oldest arrival alone splits the burst: those of its first
    # 5 ms, then the rest a batch later.
    sizes, _ = simulate(after_a_cycle_of_16(BatchPolicy(32, fixed_delay_s=GATHER_S)), BURST, 2)
    assert sizes == [4, 12], sizes
    sizes, waits = simulate(after_a_cycle_of_16(BatchPolicy(32)), BURST, 10)
    assert sizes == [16] * 10, sizes
    # The first request waited for the last one (22.5 ms) and the window after it, no longer.
    assert max(waits) == pytest.approx(0.0225 + GATHER_S)


def test_a_burst_is_held_no_longer_than_the_follow_bound() -> None:
    policy = after_a_cycle_of_16(BatchPolicy(32))
    bound = min(0.5 * compute_s(16), FOLLOW_CAP_S)  # 37 ms
    # Requests keep coming 4 ms apart, never 16 of them: the batch goes at the bound.
    assert policy.wants_more(10.020, 6, 10.0, None, 10.020) == pytest.approx(GATHER_S)
    assert policy.wants_more(10.036, 10, 10.0, None, 10.036) == pytest.approx(bound - 0.036)
    assert policy.wants_more(10.0 + bound, 11, 10.0, None, 10.0 + bound) == 0.0
    # ... and never past the oldest request's deadline.
    assert policy.wants_more(10.020, 6, 10.0, 10.024, 10.020) == pytest.approx(0.003)
    # Once no more arrive, it goes when the window after the last one closes.
    assert policy.wants_more(10.0225, 16, 10.0, None, 10.0225) == pytest.approx(GATHER_S)
    assert policy.wants_more(10.028, 16, 10.0, None, 10.0225) == 0.0


def test_a_burst_after_small_batches_is_bounded_by_its_own_size() -> None:
    # Clients that each sent one call on connecting left batches of 1 (14 ms each): the
    # burst's bound is half of what the queued requests will compute in, 7 ms an item.
    policy = BatchPolicy(32)
    policy.ran(1, 0, compute_s(1), now=0.0)
    assert policy.wants_more(10.010, 6, 10.0, None, 10.009) == pytest.approx(0.004)
    assert policy.wants_more(10.050, 8, 10.0, None, 10.049) == pytest.approx(0.004)
    assert policy.wants_more(10.056, 8, 10.0, None, 10.055) == 0.0  # 8 x 7 ms from the oldest
    sizes, waits = simulate(policy, BURST, 10)
    assert sizes == [16] * 10, sizes
    assert max(waits) == pytest.approx(0.0225 + GATHER_S)


def test_a_finished_cycle_goes_at_once() -> None:
    # All 16 of the last cycle came back 20 ms after the device freed: no more are expected,
    # so the batch goes, though the last of them arrived just now.
    policy = after_a_cycle_of_16(BatchPolicy(32))
    assert policy.wants_more(0.020, 16, 0.004, None, 0.020) == 0.0


def test_a_lone_request_after_an_idle_spell_waits_only_the_window() -> None:
    policy = after_a_cycle_of_16(BatchPolicy(32))
    assert policy.wants_more(10.0, 1, 10.0, None, 10.0) == pytest.approx(GATHER_S)
    assert policy.wants_more(10.0, 1, 10.0, None) == pytest.approx(GATHER_S)
    sizes, waits = simulate(after_a_cycle_of_16(BatchPolicy(32)), [10.0], 5)
    assert sizes == [1] * 5
    assert max(waits) <= GATHER_S + 1e-9


def test_the_adaptive_policy_costs_a_lone_client_nothing_more() -> None:
    sizes, waits = simulate(BatchPolicy(32), [0.0], 20)
    assert sizes == [1] * 20
    assert max(waits) <= GATHER_S + 1e-9


# --- the batcher itself, on a gated device ----------------------------------------------------


class GatedExecutor(ThreadPoolExecutor):
    """The device thread, holding each batch until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def gated() -> Any:
            self.started.release()
            self.gate.wait()
            return fn(*args, **kwargs)

        return super().submit(gated)


class Sizes:
    """Records each batch's size, as the server's metrics see it."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def record_batch(self, model: str, queue_seconds: Sequence[float], compute: float) -> None:
        self.sizes.append(len(queue_seconds))


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_model(load_config().models[0], torch.device("cpu"))


def item(digits: Any, loop: asyncio.AbstractEventLoop) -> WorkItem:
    method = REGISTRY["saliency"]
    request = method.prepare(digits, MethodRequest(target=None))
    x = torch.zeros((1, *digits.spec.input_size), dtype=torch.uint8)
    return WorkItem(x, method, request, 3, None, loop.create_future())


async def wait_started(executor: GatedExecutor) -> None:
    await asyncio.get_running_loop().run_in_executor(None, executor.started.acquire)


def test_requests_arriving_while_a_batch_computes_leave_as_one_batch(digits) -> None:
    async def scenario(fixed: float | None) -> list[int]:
        loop = asyncio.get_running_loop()
        executor, sizes = GatedExecutor(), Sizes()
        batcher = Batcher(digits, executor, max_batch_size=32, max_delay_s=fixed, metrics=sizes)
        batcher.start()
        try:
            first = [batcher.submit(item(digits, loop)) for _ in range(4)]
            await wait_started(executor)  # the batch of 4 is on the device
            late = [batcher.submit(item(digits, loop)) for _ in range(12)]
            await asyncio.sleep(0.05)  # the 12 wait past any gathering window
            executor.gate.set()
            await asyncio.gather(*first)
            # The first batch's clients send again at once, as closed-loop clients do.
            again = [batcher.submit(item(digits, loop)) for _ in range(4)]
            await asyncio.gather(*late, *again)
            return sizes.sizes
        finally:
            await batcher.stop()
            executor.shutdown()

    # The fixed delay sends the 12 at once and the 4 after them: the phases begin.
    assert asyncio.run(scenario(0.005)) == [4, 12, 4]
    # The adaptive policy waits for the first batch's clients: one batch of 16.
    assert asyncio.run(scenario(None)) == [4, 16]


def test_a_lone_request_on_an_idle_device_is_not_held(digits) -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        executor = GatedExecutor()
        executor.gate.set()
        batcher = Batcher(digits, executor, max_batch_size=32)
        batcher.start()
        try:
            waits = []
            for _ in range(5):
                result = await batcher.submit(item(digits, loop))
                waits.append(result.queue_ms / 1000.0)
                await asyncio.sleep(0.02)
            return waits
        finally:
            await batcher.stop()
            executor.shutdown()

    t = time.perf_counter()
    waits = asyncio.run(scenario())
    # The gathering window, plus what a loaded machine adds to a timer; never the follow wait.
    assert all(w < GATHER_S + 0.04 for w in waits), waits
    assert time.perf_counter() - t < 10
