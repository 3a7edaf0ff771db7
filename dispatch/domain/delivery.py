"""What a delivery attempt decides: the outcome events of one job's targets.

Invariants:
- an attempt records who was reached (DeliverySucceeded) and who was given up on (DeliveryFailed:
  permanent, exhausted or withdrawn); targets left to a retry are neither;
- a first attempt (`handed_at` set) is also the notice of its targets: those it leaves to a retry
  get a RespondersNotified of their own, so everyone handed to a channel counts as notified;
- a simulated channel's outcomes say so (`simulated`): nobody real was reached by them;
- the decision needs no incident state: outcomes are facts of the channel, never in conflict.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from dispatch.events.model import DeliveryFailed, DeliverySucceeded, Event, Reached, RespondersNotified, Unreached

# The fan-out records the recipients no channel reaches as failed on this pseudo-channel, so every
# screen says they were not notified (nothing is handed anywhere: no `handed_at`, no notice).
NO_CHANNEL = "none"
NO_CHANNEL_CONFIGURED = "no channel configured"
NO_CHANNEL_ROUTED = "no channel reaches this person"


class RecordAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of one job: who was reached, who was given up on, who is left to a retry."""

    incident_id: str
    channel: str
    round: int
    attempt: int
    reached: tuple[Reached, ...] = ()
    failures: tuple[Unreached, ...] = ()
    retried: tuple[str, ...] = ()
    handed_at: datetime | None = None
    simulated: bool = False


def decide_attempt(command: RecordAttempt, now: datetime) -> list[Event]:
    """The outcome events of an attempt, in the order they are recorded."""
    c = command
    events: list[Event] = []
    if c.reached:
        events.append(
            DeliverySucceeded(
                at=now,
                incident_id=c.incident_id,
                channel=c.channel,
                round=c.round,
                attempt=c.attempt,
                targets=c.reached,
                handed_at=c.handed_at,
                simulated=c.simulated,
            )
        )
    if c.failures:
        events.append(
            DeliveryFailed(
                at=now,
                incident_id=c.incident_id,
                channel=c.channel,
                round=c.round,
                attempt=c.attempt,
                failures=c.failures,
                handed_at=c.handed_at,
                simulated=c.simulated,
            )
        )
    if c.retried and c.handed_at is not None:
        phones = tuple(dict.fromkeys(c.retried))
        events.append(
            RespondersNotified(
                at=c.handed_at,
                incident_id=c.incident_id,
                channel=c.channel,
                round=c.round,
                phones=phones,
                simulated=c.simulated,
            )
        )
    return events
