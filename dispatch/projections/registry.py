"""The SQL read models this version keeps: one list for the service, `dispatch replay`,
`dispatch projections` and the benchmarks, so a new projection is added in one place."""

from __future__ import annotations

from dispatch.projections.incidents import IncidentsProjection
from dispatch.projections.roster import RosterProjection
from dispatch.projections.runner import Projection


def all_projections() -> list[Projection]:
    """A fresh instance of every SQL projection (each holds its own fold state), in applying order."""
    return [IncidentsProjection(), RosterProjection()]
