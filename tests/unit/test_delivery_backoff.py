"""Delivery retries with the shipped settings: the attempts span at least 30 s, so a webhook
receiver down for 30 s still gets every delivery (tests/e2e/test_outages.py shows the same end to
end, on a shorter base so that the outage it waits out is short too)."""

from __future__ import annotations

from unittest.mock import patch

from dispatch.handlers.delivery import DeliveryWorker
from dispatch.observe.metrics import Metrics
from dispatch.settings import Settings


def retries_span(jitter: str) -> float:
    """From the first attempt to the last, every retry at the lower (or upper) end of its jitter."""
    settings = Settings()
    worker = DeliveryWorker(
        None,  # type: ignore[arg-type]  # backoff() reads only the retry settings
        None,  # type: ignore[arg-type]
        {},
        metrics=Metrics(),
        max_attempts=settings.delivery_max_attempts,
        backoff_base=settings.delivery_backoff_base,
        backoff_max=settings.delivery_backoff_max,
    )
    with patch(
        "dispatch.handlers.delivery.random.uniform", side_effect=lambda low, high: {"low": low, "high": high}[jitter]
    ):
        return sum(worker.backoff(attempt, None) for attempt in range(1, settings.delivery_max_attempts))


def test_the_shipped_retries_outlast_a_receiver_down_for_30_s() -> None:
    assert retries_span("low") == 30.0
    assert retries_span("high") == 45.0


def test_a_receiver_s_retry_after_is_honoured_up_to_ten_minutes() -> None:
    worker = DeliveryWorker(None, None, {}, metrics=Metrics())  # type: ignore[arg-type]
    assert worker.backoff(1, 7.5) == 7.5
    assert worker.backoff(4, 3600) == 600.0
