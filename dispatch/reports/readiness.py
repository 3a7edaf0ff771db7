"""Group readiness: who will not answer, who cannot be reached, which groups cannot be covered,
which groups have not been exercised.

Judged from the roster read model (live groups and their current members) and the incident read
model (each member's alarms), as of `now`:
- silent: a member whose last `last` alarms (as a recipient, in that group) were all left without
  an answer (no accept, decline or arrival), and who had at least `last` of them;
- unreachable: a member whose most recent alarm in that group was never delivered to them and
  failed (`permanent`: the number or address is invalid; `exhausted`: every retry failed);
- absent: a member away at `now` (an absence with `starts <= now < until`), with the substitute
  rung in their place (or none);
- without quorum: a group whose members, leaving out the silent, the unreachable and the absent
  (whose substitutes count in their role), cannot meet the cover quorum (`officer,leader|assistant`
  by default): each missing clause is named, with why (`absent`: its only holders are away with no
  substitute; `out_of_reach`; `none_in_group`) — a group left short by an absence shows here;
- quiet: a group with no alarm and no drill raised in the last `quiet_days` days;
- drills: each group's last drill (raised as a drill, or an alarm cancelled as one), who opened it,
  who of the alerted answered and how fast (first accept, cover, first on scene), who did not:
  drills are left out of the response-time and statistics reports and judged here on their own.

Invariants: only live groups and current members are judged (a member unbound since is not
reported); a finding names the village, group, member and the facts behind it; phone numbers are
masked unless `reveal`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from dispatch.domain.absence import ROLE_RANK
from dispatch.domain.incident import Quorum
from dispatch.domain.messages import ROLE_ZH
from dispatch.projections.incidents import INCIDENTS, RESPONDERS
from dispatch.projections.roster import ABSENCES, GROUPS, MEMBERS
from dispatch.projections.sql import Connection, marks
from dispatch.reports.common import Zones, shown_phone
from dispatch.reports.periods import local_iso

DAY = 86400.0


def _village_filter(villages: frozenset[str] | None, column: str) -> tuple[str, list[Any]]:
    if villages is None:
        return "", []
    if not villages:
        return " AND 1 = 0", []
    return f" AND {column} IN ({marks(len(villages))})", sorted(villages)


def _names(conn: Connection, phones: list[str]) -> dict[str, str]:
    """A roster name for each of these numbers that is a member somewhere."""
    names: dict[str, str] = {}
    for i in range(0, len(phones), 500):
        chunk = phones[i : i + 500]
        for phone, name in conn.query(f"SELECT phone, name FROM {MEMBERS} WHERE phone IN ({marks(len(chunk))})", chunk):
            names.setdefault(str(phone), str(name))
    return names


def readiness(
    conn: Connection,
    villages: frozenset[str] | None,
    zones: Zones,
    quorum: Quorum,
    *,
    now: float,
    group: str | None = None,
    last: int = 3,
    quiet_days: float = 90.0,
    reveal: bool = False,
) -> dict[str, Any]:
    vf, vp = _village_filter(villages, "g.village")
    gf, gp = (" AND g.grp = ?", [group]) if group is not None else ("", [])
    groups = [
        (str(v), str(g))
        for v, g in conn.query(f"SELECT g.village, g.grp FROM {GROUPS} g WHERE g.dissolved = 0{vf}{gf}", (*vp, *gp))
    ]
    members: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for v, g, phone, name, role in conn.query(
        f"SELECT m.village, m.grp, m.phone, m.name, m.role FROM {MEMBERS} m JOIN {GROUPS} g "
        f"ON g.village = m.village AND g.grp = m.grp WHERE g.dissolved = 0{vf}{gf} ORDER BY m.village, m.grp, m.phone",
        (*vp, *gp),
    ):
        members[(v, g)].append((phone, name, role))

    rf, rp = _village_filter(villages, "r.village")
    rgf, rgp = (" AND r.grp = ?", [group]) if group is not None else ("", [])
    recent: dict[tuple[str, str, str], list[tuple[Any, ...]]] = defaultdict(list)
    for phone, v, g, raised, accepted, declined, arrived, delivered, failed, _ in conn.query(
        "SELECT * FROM (SELECT r.phone, r.village, r.grp, r.raised_at, r.accepted_at, r.declined_at, r.arrived_at,"
        " r.delivered_at, r.failed_kind, ROW_NUMBER() OVER (PARTITION BY r.phone, r.village, r.grp"
        f" ORDER BY r.raised_at DESC) AS rn FROM {RESPONDERS} r WHERE r.recipient = 1 AND r.grp IS NOT NULL{rf}{rgf})"
        " ranked WHERE rn <= ? ORDER BY phone, village, grp, raised_at DESC",
        (*rp, *rgp, max(1, last)),
    ):
        recent[(v, g, phone)].append((raised, accepted, declined, arrived, delivered, failed))

    silent, unreachable = [], []
    out_of_reach: set[tuple[str, str, str]] = set()
    for (v, g), people in members.items():
        tz = zones.of(v)
        for phone, name, role in people:
            alarms = recent.get((v, g, phone), [])
            person = {
                "village": v,
                "group": g,
                "phone": shown_phone(phone, reveal),
                "name": name,
                "role": role,
                "role_zh": ROLE_ZH.get(role, role),  # type: ignore[call-overload]
            }
            if len(alarms) >= last and all(a[1] is None and a[2] is None and a[3] is None for a in alarms):
                silent.append({**person, "alarms": len(alarms), "last_alarm_at": local_iso(alarms[0][0], tz)})
                out_of_reach.add((v, g, phone))
            if alarms and alarms[0][4] is None and alarms[0][5] is not None:
                unreachable.append({**person, "failure": alarms[0][5], "last_alarm_at": local_iso(alarms[0][0], tz)})
                out_of_reach.add((v, g, phone))

    phones = sorted({phone for people in members.values() for phone, _, _ in people})
    away: dict[str, tuple[float, float, str | None, str]] = {}
    for i in range(0, len(phones), 500):
        chunk = phones[i : i + 500]
        for phone, starts, until, substitute, substitute_name in conn.query(
            f"SELECT phone, starts_at, until_at, substitute, substitute_name FROM {ABSENCES}"
            f" WHERE starts_at <= ? AND until_at > ? AND phone IN ({marks(len(chunk))})",
            (now, now, *chunk),
        ):
            away[str(phone)] = (float(starts), float(until), substitute, str(substitute_name))
    # substitutes away themselves (no chains): their own absences, looked up once
    subs = sorted({a[2] for a in away.values() if a[2] is not None and a[2] not in away})
    subs_away = {
        str(phone)
        for i in range(0, len(subs), 500)
        for (phone,) in conn.query(
            f"SELECT phone FROM {ABSENCES} WHERE starts_at <= ? AND until_at > ?"
            f" AND phone IN ({marks(len(subs[i : i + 500]))})",
            (now, now, *subs[i : i + 500]),
        )
    }
    sub_names = _names(conn, sorted({a[2] for a in away.values() if a[2] is not None and not a[3]}))
    absent = []
    standing: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for (v, g), people in members.items():
        tz = zones.of(v)
        for phone, name, role in people:
            if phone not in away:
                continue
            starts, until, substitute, substitute_name = away[phone]
            rung = substitute is not None and substitute not in away and substitute not in subs_away
            if rung and substitute is not None:
                standing[(v, g)].append((substitute, role))
            absent.append(
                {
                    "village": v,
                    "group": g,
                    "phone": shown_phone(phone, reveal),
                    "name": name,
                    "role": role,
                    "role_zh": ROLE_ZH.get(role, role),  # type: ignore[call-overload]
                    "from": local_iso(starts, tz),
                    "until": local_iso(until, tz),
                    "substitute": shown_phone(substitute, reveal) if substitute else None,
                    "substitute_name": substitute_name or sub_names.get(substitute or "", ""),
                    "substitute_rung": rung,
                }
            )

    without_quorum = []
    for v, g in groups:
        people = members.get((v, g), [])
        present = {role for _, _, role in people}
        gone = {role for phone, _, role in people if phone in away}
        # who an alarm would ring, as routing does: a substitute once, in the better-ranked role
        rung_as = {phone: role for phone, _, role in people if (v, g, phone) not in out_of_reach and phone not in away}
        for substitute, role in standing[(v, g)]:
            if ROLE_RANK.get(role, 9) < ROLE_RANK.get(rung_as.get(substitute, ""), 9):
                if substitute in rung_as:
                    gone.add(rung_as[substitute])  # a member standing in for another leaves their own role
                rung_as[substitute] = role
        available = set(rung_as.values())
        missing = []
        for clause in quorum:
            if available.intersection(clause):
                continue
            roles = "|".join(clause)
            if gone.intersection(clause):
                why = "absent"
            else:
                why = "out_of_reach" if present.intersection(clause) else "none_in_group"
            missing.append({"roles": roles, "roles_zh": "或".join(ROLE_ZH.get(r, r) for r in clause), "why": why})
        if missing:
            without_quorum.append({"village": v, "group": g, "missing": missing})

    cutoff = now - quiet_days * DAY
    inf, ip = _village_filter(villages, "village")
    igf, igp = (" AND grp = ?", [group]) if group is not None else ("", [])
    last_alarm: dict[tuple[str, str], float] = {}
    last_drill: dict[tuple[str, str], float] = {}
    for v, g, raised, drill in conn.query(
        f"SELECT village, grp, MAX(raised_at), MAX(CASE WHEN {IS_DRILL} THEN raised_at END)"
        f" FROM {INCIDENTS} WHERE grp IS NOT NULL{inf}{igf} GROUP BY village, grp",
        (*ip, *igp),
    ):
        last_alarm[(v, g)] = raised
        if drill is not None:
            last_drill[(v, g)] = drill
    quiet = []
    for v, g in groups:
        latest = last_alarm.get((v, g))
        if latest is None or latest < cutoff:
            tz = zones.of(v)
            quiet.append(
                {
                    "village": v,
                    "group": g,
                    "last_alarm_at": local_iso(latest, tz),
                    "last_drill_at": local_iso(last_drill.get((v, g)), tz),
                    "days_since": None if latest is None else int((now - latest) // DAY),
                }
            )
    drills = last_drills(conn, groups, zones, inf, igf, [*ip, *igp], reveal=reveal)
    return {
        "villages": sorted(villages) if villages is not None else None,
        "group": group,
        "as_of": local_iso(now, zones.default),
        "last": last,
        "quiet_days": quiet_days,
        "quorum": ",".join("|".join(c) for c in quorum),
        "groups": len(groups),
        "members": sum(len(p) for p in members.values()),
        "silent_members": silent,
        "unreachable_members": unreachable,
        "absent_members": absent,
        "groups_without_quorum": without_quorum,
        "quiet_groups": quiet,
        "drills": drills,
        "groups_never_drilled": sum(1 for key in groups if key not in last_drill),
    }


IS_DRILL = "(origin = 'drill' OR cancel_reason = 'drill')"


def _after(at: float | None, raised: float) -> float | None:
    return None if at is None else round(at - raised, 1)


def last_drills(
    conn: Connection,
    groups: list[tuple[str, str]],
    zones: Zones,
    village_filter: str,
    group_filter: str,
    params: list[Any],
    *,
    reveal: bool,
) -> list[dict[str, Any]]:
    """Each live group's last drill: when, who opened it, how fast it was answered, who answered
    (and after how long) and who of the alerted did not."""
    live = set(groups)
    found: dict[str, dict[str, Any]] = {}
    for iid, v, g, raised, first_accept, covered, arrived, opened_by, status in conn.query(
        "SELECT id, village, grp, raised_at, first_accept_at, covered_at, first_arrival_at, opened_by, status FROM"
        " (SELECT id, village, grp, raised_at, first_accept_at, covered_at, first_arrival_at, opened_by, status,"
        " ROW_NUMBER() OVER (PARTITION BY village, grp ORDER BY raised_at DESC) AS rn"
        f" FROM {INCIDENTS} WHERE grp IS NOT NULL AND {IS_DRILL}{village_filter}{group_filter}) ranked"
        " WHERE rn = 1 ORDER BY village, grp",
        params,
    ):
        if (v, g) not in live:
            continue
        found[iid] = {
            "village": v,
            "group": g,
            "incident_id": iid,
            "drilled_at": local_iso(raised, zones.of(v)),
            "opened_by": opened_by or None,
            "status": status,
            "covered": covered is not None,
            "time_to_first_accept": _after(first_accept, raised),
            "time_to_covered": _after(covered, raised),
            "time_to_arrival": _after(arrived, raised),
            "answered": [],
            "not_answered": [],
            "_raised": raised,
        }
    if found:
        for iid, phone, name, role, accepted in conn.query(
            f"SELECT incident_id, phone, name, role, accepted_at FROM {RESPONDERS}"
            f" WHERE recipient = 1 AND incident_id IN ({marks(len(found))}) ORDER BY incident_id, accepted_at, phone",
            sorted(found),
        ):
            drill = found[iid]
            person = {
                "phone": shown_phone(phone, reveal),
                "name": name,
                "role": role,
                "role_zh": ROLE_ZH.get(role, role),
            }
            if accepted is None:
                drill["not_answered"].append(person)
            else:
                drill["answered"].append({**person, "after_s": _after(accepted, drill["_raised"])})
    for drill in found.values():
        drill.pop("_raised")
    return sorted(found.values(), key=lambda d: (d["village"], d["group"]))
