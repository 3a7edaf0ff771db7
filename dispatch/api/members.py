"""Members away: an absence with its substitute set, read, ended and listed.

Invariants: an admin may mark any member absent; an officer or duty desk only a member whose every
group is in its villages (any other number is 404, as if unknown); the act names its actor (the
token, and the console or CLI when they say so) in the log and in the audit trail; a number that
is no member is 404, a period that makes no sense 422; an absence already as asked, or ended
twice, changes nothing (200 either way)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, delete, get, put
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody

from dispatch.api.deps import MAX_JSON_BYTES, ApiServices, audit, channel_of, narrowed, village_zone, visible, who
from dispatch.api.views import actor_view, iso
from dispatch.domain.absence import Absence, EndAbsence, SetAbsence
from dispatch.domain.access import Principal
from dispatch.domain.errors import InvalidCommand, NotFound
from dispatch.domain.messages import ROLE_ZH
from dispatch.domain.phone import try_normalize
from dispatch.domain.timezones import human_time

ABSENCES_MAX = 1000


class AbsenceBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An absence: from (default: now) until (RFC 3339 with an offset; the end is excluded), the
    substitute's number (null: nobody stands in), their name when the roster does not know them,
    and a note (e.g. 年假, 培训)."""

    until: datetime
    starts: datetime | None = msgspec.field(default=None, name="from")
    substitute: str | None = None
    substitute_name: str = ""
    note: str = ""


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The member absence routes."""

    def e164(raw: str) -> str:
        phone = try_normalize(raw, s.region)
        if phone is None:
            raise InvalidCommand(f"{raw[:40]!r} is not a phone number")
        return phone

    def villages_of(phone: str) -> set[str]:
        return {m.group.village for m in s.directory.directory.memberships(phone)}

    def allowed(principal: Principal, phone: str) -> set[str]:
        """The member's villages; 404 unless the principal sees every one of them."""
        villages = villages_of(phone)
        if not villages or not all(visible(s, principal, v) for v in villages):
            raise NotFound("no member with this number in the villages this token sees")
        return villages

    def view(phone: str, absence: Absence | None) -> dict[str, Any]:
        directory = s.directory.directory
        now = s.groups.clock()
        memberships = directory.memberships(phone)
        groups = [
            {
                "village": m.group.village,
                "group": m.group.group,
                "role": m.person.role,
                "role_zh": ROLE_ZH.get(m.person.role, m.person.role),
            }
            for m in memberships
        ]
        shown: dict[str, Any] = {
            "phone": phone,
            "name": memberships[0].person.name if memberships else "",
            "groups": groups,
            "absence": None,
        }
        if absence is None:
            return shown
        zone = village_zone(s, memberships[0].group.village) if memberships else s.time_zone
        substitute_name = absence.substitute_name
        if absence.substitute and not substitute_name:
            found = directory.memberships(absence.substitute)
            substitute_name = found[0].person.name if found else ""
        shown["absence"] = {
            "from": iso(absence.starts),
            "until": iso(absence.until),
            "from_text": human_time(absence.starts, zone),
            "until_text": human_time(absence.until, zone),
            "absent_now": absence.absent_at(now),
            "over": absence.over_at(now),
            "substitute": absence.substitute,
            "substitute_name": substitute_name,
            "note": absence.note,
            "set_at": iso(absence.set_at),
            "set_by": actor_view(absence.actor),
        }
        return shown

    @put(
        "/v1/members/{number:str}/absence",
        status_code=200,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["members"],
        summary="Mark a member absent for a period, with the substitute rung in their place",
        description=(
            "From `from` (default: now) until `until` (the end excluded), alarms of every group the "
            "number serves leave it out and ring `substitute` instead, in the member's role there, so "
            "the substitute's accept meets that role's cover clause; the member may still answer. The "
            "substitute may be anyone: a member of the group, another village's officer, a number in no "
            "group (give `substitute_name`). No substitute: readiness shows the groups left short and an "
            "alarm escalates at its ack deadline if nobody else meets the clause. Replaces any absence "
            "set before. Admin, or an officer or duty desk for a member of its villages."
        ),
    )
    async def put_absence(
        number: FromPath[str], data: JSONBody[AbsenceBody], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        principal = who(s, request, "absence")
        phone = e164(number)
        villages = allowed(principal, phone)
        substitute = e164(data.substitute) if data.substitute else None
        command = SetAbsence(
            phone=phone,
            starts=data.starts,
            until=data.until,
            substitute=substitute,
            substitute_name=data.substitute_name.strip(),
            note=data.note.strip(),
            actor=principal.actor(channel_of(request)),
        )
        absence = await s.groups.decide_absence(command)
        detail = f"until={iso(data.until)} substitute={'yes' if substitute else 'none'}"
        await audit(s, request, principal, "member.absence", target=phone, village=min(villages), detail=detail)
        return view(phone, absence)

    @delete(
        "/v1/members/{number:str}/absence",
        status_code=200,
        tags=["members"],
        summary="End a member's absence now (or call off one not begun); the member is rung again",
        description="Ending an absence that is over, or none, changes nothing (200, `ended: false`).",
    )
    async def end_absence(number: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "absence")
        phone = e164(number)
        villages = allowed(principal, phone)
        had = s.directory.directory.absences.get(phone)
        now = s.groups.clock()
        absence = await s.groups.decide_absence(EndAbsence(phone=phone, actor=principal.actor(channel_of(request))))
        ended = had is not None and not had.over_at(now) and absence is None
        await audit(s, request, principal, "member.absence", target=phone, village=min(villages), detail="ended")
        return {**view(phone, absence), "ended": ended}

    @get("/v1/members/{number:str}/absence", tags=["members"], summary="A member's absence (null: none)")
    async def get_absence(number: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "read")
        phone = e164(number)
        allowed(principal, phone)
        return view(phone, s.directory.directory.absences.get(phone))

    @get(
        "/v1/absences",
        tags=["members"],
        summary="Members away now or soon, in the villages the token sees (optionally one village)",
        description="Each member whose absence is not over, by start; `absent_now` says whether it has begun.",
    )
    async def list_absences(request: Request[Any, Any, Any], village: FromQuery[str | None] = None) -> dict[str, Any]:
        allowed_villages = narrowed(s, who(s, request, "read"), village)
        directory = s.directory.directory
        now = s.groups.clock()
        shown = []
        for phone, absence in sorted(directory.absences.items(), key=lambda item: (item[1].starts, item[0])):
            if absence.over_at(now):
                continue
            villages = villages_of(phone)
            if not villages or (allowed_villages is not None and not villages <= allowed_villages):
                continue
            shown.append(view(phone, absence))
            if len(shown) == ABSENCES_MAX:
                break
        return {"absences": shown, "count": len(shown)}

    return [put_absence, end_absence, get_absence, list_absences]
