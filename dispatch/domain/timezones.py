"""Time zones: everything is stored in UTC; reports show a village's times in its own zone.

Invariant: a zone name is accepted only if the IANA database (the system's, or the `tzdata`
package where the system has none) knows it; the default is China Standard Time.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIME_ZONE = "Asia/Shanghai"


def valid_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows."""
    if not name or len(name) > 64 or name.startswith("/") or ".." in name:
        return False
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The zone called `name`; raises ZoneInfoNotFoundError (or ValueError) for an unknown one."""
    return ZoneInfo(name)
