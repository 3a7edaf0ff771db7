"""A message the log could not take comes back later with each delivery, at a random moment: a burst's
retries never return together (the 5,000-alarm deadlines run: 34,759 retries at a fixed 2 s)."""

from __future__ import annotations

import random
import statistics

import pytest

from dispatch.handlers.subscribers import RETRY_DELAY, RETRY_DELAY_MAX, consume, retry_delay
from dispatch.store.eventstore import StoreUnavailable


def test_retries_of_a_log_unavailable_double_per_delivery_and_spread_at_random() -> None:
    random.seed(28)
    for delivered in range(1, 12):
        nominal = min(RETRY_DELAY_MAX, RETRY_DELAY * 2 ** (delivered - 1))
        delays = [retry_delay(delivered) for _ in range(500)]
        assert all(0.5 * nominal <= d <= 1.5 * nominal for d in delays)
        assert max(delays) - min(delays) > 0.5 * nominal, "retries of one burst would come back together"
        assert statistics.median(delays) == pytest.approx(nominal, rel=0.15)


class _Delivered:
    """A JetStream message as `consume` sees it: its delivery count, and the delay it was nacked with."""

    def __init__(self, delivered: int) -> None:
        self.metadata = type("Meta", (), {"num_delivered": delivered})()
        self.data = b"{}"
        self.headers: dict[str, str] = {}
        self.subject = "dispatch.test"
        self.nacked: list[float] = []

    async def nak(self, delay: float) -> None:
        self.nacked.append(delay)

    async def ack(self) -> None:
        raise AssertionError("a message the log could not take was acknowledged")


async def test_a_message_the_log_could_not_take_comes_back_later_with_each_delivery() -> None:
    async def unavailable(_: object) -> None:
        raise StoreUnavailable("event log unavailable: TimeoutError")

    random.seed(5)
    waits: dict[int, list[float]] = {}
    for delivered in (1, 2, 3, 8):
        for _ in range(50):
            raw = _Delivered(delivered)
            await consume(raw, source="test", decode=lambda m: m, handle=unavailable, broker=None, metrics=None)  # type: ignore[arg-type]
            waits.setdefault(delivered, []).extend(raw.nacked)
    medians = [statistics.median(waits[d]) for d in (1, 2, 3, 8)]
    assert medians == sorted(medians) and medians[2] > 3 * medians[0]
    assert max(waits[8]) <= 1.5 * RETRY_DELAY_MAX
    assert len(set(waits[1])) == 50, "the first retries of a burst all came back at the same moment"
