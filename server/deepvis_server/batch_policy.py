"""When a batch leaves the queue: the batcher's policy, apart from its I/O so that it can be
driven by a scripted clock.

The fixed policy (an explicit `max_delay_ms`) lets the oldest queued request wait that long
for company, then sends whatever has gathered. Under a closed-loop load (clients that send
their next request when the last one is answered) it locks into phases: the requests that
arrived while a batch computed have waited past the delay by the time the device frees, so
they leave at once as a small batch, and the big batch's clients come back during it: 4, 12,
4, 12, ... for 16 clients, whatever the delay.

The adaptive policy (the default) keeps the same short gathering window for a request that
finds the device idle, and adds one rule: when the device frees with fewer requests queued
than the clients it has just been serving (the last batch plus those that queued meanwhile),
it waits for those clients to come back, for at most half of the last batch's compute
time (never more than `FOLLOW_CAP_S`), and never past the oldest queued request's deadline.
One full batch then forms instead of two halves, and batch sizes converge to the number of
active clients (up to `max_batch_size`) from any starting phase. A client that went away
costs that bounded wait once: the next expectation is what actually came.

A burst is held together too: unless the last cycle's clients have all come back within that
wait, each new arrival opens the gathering window again, for at most half of what a batch of
the queued size computes in (estimated from the last batch, per item), counted from the
oldest request's arrival. Clients that start at once (a notebook's 16 calls, a job's workers,
the first cycle after an idle spell) then leave as one batch, not as the few that came within
the first window followed by the rest a batch later. A lone request never waits longer than
the window: with nothing arriving after it, the window does not open again.
"""

from __future__ import annotations

from dataclasses import dataclass

# The gathering window of the adaptive policy for a request that finds the device idle.
GATHER_S = 0.005
# The follow wait: this fraction of the last batch's compute time, at most FOLLOW_CAP_S.
FOLLOW_FRACTION = 0.5
FOLLOW_CAP_S = 0.1
# A request is sent this long before its deadline at the latest, so that it can still compute.
DEADLINE_MARGIN_S = 0.001


@dataclass
class BatchPolicy:
    """Says how long the batch now forming may wait. `fixed_delay_s` None: adaptive."""

    max_batch_size: int
    fixed_delay_s: float | None = None
    expected: int = 0  # clients of the last cycle: its batch plus those queued meanwhile
    freed_at: float | None = None  # when the device last freed (the loop's clock)
    last_compute_s: float = 0.0
    last_batch: int = 0

    @property
    def adaptive(self) -> bool:
        return self.fixed_delay_s is None

    def wants_more(
        self,
        now: float,
        queued: int,
        oldest_arrival: float,
        oldest_deadline: float | None,
        newest_arrival: float | None = None,
    ) -> float:
        """How long to wait for more requests of the batch now forming (0: send it now),
        given how many compatible requests are queued, the oldest one's arrival and deadline,
        and the newest one's arrival (None: the oldest is the only one)."""
        if queued >= self.max_batch_size:
            return 0.0
        window = GATHER_S if self.fixed_delay_s is None else self.fixed_delay_s
        due = oldest_arrival + window
        if self.adaptive and self.freed_at is not None:
            follow = min(FOLLOW_FRACTION * self.last_compute_s, FOLLOW_CAP_S)
            if queued < self.expected:
                due = max(due, self.freed_at + follow)
            # The last cycle's clients all came back in time: theirs is the batch; go.
            cycle_done = queued >= self.expected and now - self.freed_at <= follow
            if not cycle_done:
                # A burst still arriving: each arrival opens the window again, for at most
                # that fraction of what a batch of this size computes in (from the last one).
                estimate = self.last_compute_s * max(1.0, queued / max(1, self.last_batch))
                bound = min(FOLLOW_FRACTION * estimate, FOLLOW_CAP_S)
                newest = oldest_arrival if newest_arrival is None else newest_arrival
                due = max(due, min(newest + GATHER_S, oldest_arrival + bound))
        if oldest_deadline is not None:
            due = min(due, oldest_deadline - DEADLINE_MARGIN_S)
        return max(0.0, due - now)

    def ran(self, batch: int, queued_meanwhile: int, compute_s: float, now: float) -> None:
        """A batch of `batch` requests finished computing at `now`, after `compute_s`, with
        `queued_meanwhile` compatible requests queued."""
        self.expected = min(self.max_batch_size, batch + queued_meanwhile)
        self.freed_at = now
        self.last_compute_s = compute_s
        self.last_batch = batch
