"""The `dispatch` command: serve, demo, call, respond, incident, groups, report, replay, projections.

This module parses the command line and runs the client commands; the commands that work on the log
or the read models live beside it (`offline`, `replay`, `projections`, `tokens`, `report`).

Client commands talk to a running service over HTTP (`--server`, default from DISPATCH_SERVER or
DISPATCH_HTTP); `serve`, `demo` and `replay` run the service's parts in this process.
Exit status: 0 done, 1 refused by the service (the reason is printed), 2 bad usage or settings,
3 the service could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dispatch.cli.audit import add_arguments as add_audit_arguments
from dispatch.cli.report import add_arguments as add_report_arguments
from dispatch.domain.access import ROLES
from dispatch.domain.messages import CANCEL_ZH, CATEGORY_ZH
from dispatch.settings import Settings, SettingsError

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    """A problem the user can fix, said with what to do; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dispatch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _server_and_source(args: argparse.Namespace) -> tuple[str, str]:
    """The service URL, and where it came from (for messages)."""
    if getattr(args, "server", None):
        url, source = str(args.server), "--server"
    elif os.environ.get("DISPATCH_SERVER"):
        url, source = os.environ["DISPATCH_SERVER"], "DISPATCH_SERVER"
    else:
        http = os.environ.get("DISPATCH_HTTP", "127.0.0.1:8080")
        host, _, port = http.rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        source = "DISPATCH_HTTP" if "DISPATCH_HTTP" in os.environ else "the default (DISPATCH_HTTP)"
        return f"http://{host}:{port}", source
    if not url.startswith(("http://", "https://")):
        example = url.split("/")[0] or "127.0.0.1:8080"
        raise CliError(f"{source} {url!r} is not a URL: give it with its scheme, e.g. http://{example}")
    return url.rstrip("/"), source


def _server(args: argparse.Namespace) -> str:
    return _server_and_source(args)[0]


def _token_file() -> Path:
    return Path(os.environ.get("DISPATCH_DATA_DIR", "./dispatch-data")) / "admin.token"


def _token_and_source(args: argparse.Namespace) -> tuple[str | None, str]:
    """The bearer token and where it came from; (None, what was looked for) when there is none."""
    if getattr(args, "token", None):
        return str(args.token), "--token"
    if os.environ.get("DISPATCH_TOKEN"):
        return os.environ["DISPATCH_TOKEN"], "DISPATCH_TOKEN"
    path = _token_file()
    try:
        token = path.read_text().strip()
    except OSError as exc:
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror})"
        return None, f"no --token, no DISPATCH_TOKEN, and {path.resolve()} {reason}"
    if not token:
        return None, f"no --token, no DISPATCH_TOKEN, and {path.resolve()} is empty"
    return token, str(path.resolve())


def _token(args: argparse.Namespace) -> str | None:
    return _token_and_source(args)[0]


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> httpx.Response:
    server, source = _server_and_source(args)
    token = _token(args)
    kwargs["headers"] = {**kwargs.get("headers", {}), "X-Dispatch-Client": "cli"}
    if token:
        kwargs["headers"] = {**kwargs["headers"], "Authorization": f"Bearer {token}"}
    try:
        return httpx.request(method, server + path, timeout=30, **kwargs)
    except httpx.ConnectError as exc:
        where = server.split("://", 1)[1]
        raise CliError(
            f"cannot reach the dispatch service at {server} (from {source}): {exc or 'connection failed'}.\n"
            f"Is `dispatch serve` running on {where}? Otherwise pass --server http://HOST:PORT "
            "(or set DISPATCH_SERVER) with the address it listens on (its DISPATCH_HTTP).",
            EXIT_UNREACHABLE,
        ) from None
    except httpx.HTTPError as exc:
        raise CliError(
            f"cannot reach the dispatch service at {server} (from {source}): {type(exc).__name__} {exc}",
            EXIT_UNREACHABLE,
        ) from None


def _refusal_hint(args: argparse.Namespace, status: int, error: str) -> str | None:
    """What to do about a 401 or a 403."""
    if status == 401:
        token, source = _token_and_source(args)
        if token is None:
            return (
                f"no token was sent: {source}. Run this where `dispatch serve` keeps its data directory "
                "(or set DISPATCH_DATA_DIR), or pass --token / set DISPATCH_TOKEN "
                "(issue one with `dispatch tokens create`)."
            )
        return f"the token from {source} is not valid here: revoked, mistyped, or issued by another service's log."
    if status == 403 and "token may not" in error:
        return "use a token with that role: `dispatch tokens create --name NAME --role ROLE ...` issues one."
    return None


def _fetch(args: argparse.Namespace, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> Any:
    """The response's JSON; anything but `expect` is printed as a refusal and exits 1."""
    return _answered(args, _request(args, method, path, **kwargs), expect)


def _answered(args: argparse.Namespace, response: httpx.Response, expect: int = 200) -> Any:
    """`response`'s JSON when its status is `expect`; anything else is printed as a refusal and exits 1."""
    if response.status_code == expect:
        return response.json()
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    print(f"refused ({response.status_code}): {body.get('error')}", file=sys.stderr)
    for item in body.get("errors", []):
        print(f"  line {item['line']}: {item['message']}", file=sys.stderr)
    if hint := _refusal_hint(args, response.status_code, str(body.get("error"))):
        print(hint, file=sys.stderr)
    raise SystemExit(EXIT_REFUSED)


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


# --- service-side commands ------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        data_dir=Path(args.data_dir) if getattr(args, "data_dir", None) else None,
        http=getattr(args, "http", None),
        nats_urls=[u.strip() for u in args.nats_url.split(",") if u.strip()]
        if getattr(args, "nats_url", None)
        else None,
        database_url=getattr(args, "database_url", None),
        nats_user=getattr(args, "nats_user", None),
        nats_creds=Path(args.nats_creds) if getattr(args, "nats_creds", None) else None,
        nats_tls_ca=Path(args.nats_tls_ca) if getattr(args, "nats_tls_ca", None) else None,
        nats_tls_cert=Path(args.nats_tls_cert) if getattr(args, "nats_tls_cert", None) else None,
        nats_tls_key=Path(args.nats_tls_key) if getattr(args, "nats_tls_key", None) else None,
        simulate_phones=True if getattr(args, "simulate_phones", False) else None,
    )


def _quiet_settings(args: argparse.Namespace) -> Settings:
    """The settings of a command that works on the log itself, its logs quiet but for warnings."""
    from dispatch.observe import logging as dlog

    settings = _settings(args)
    dlog.configure(settings.log_format, "warning")
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from dispatch.bootstrap import run
    from dispatch.observe import logging as dlog
    from dispatch.sim.phones import SimulatedPhones

    settings = _settings(args)
    dlog.configure(settings.log_format, settings.log_level, cache=True)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(run(settings, simulator=lambda who: SimulatedPhones(who=who)))
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (the `fast` extra) and DISPATCH_EVENT_LOOP is not `asyncio`;
    else None (asyncio's own)."""
    if os.environ.get("DISPATCH_EVENT_LOOP", "auto") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def cmd_demo(args: argparse.Namespace) -> int:
    if args.sip:
        from dispatch.sim.sip_demo import run_sip_demo

        return asyncio.run(run_sip_demo(keep=args.keep))
    from dispatch.sim.demo import run_demo

    return asyncio.run(run_demo(keep=args.keep))


def cmd_gateway_sim(args: argparse.Namespace) -> int:
    from dispatch.sim.gateway import GatewaySim, Scenario, serve

    token = args.token or os.environ.get("DISPATCH_GATEWAY_TOKEN")
    secret = os.environ.get("DISPATCH_GATEWAY_SECRET")
    if not token or not secret:
        print(
            "dispatch gateway-sim: set --token (or DISPATCH_GATEWAY_TOKEN, a gateway token) and "
            "DISPATCH_GATEWAY_SECRET (the secret dispatch signs gateway requests with)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    host, _, port = args.listen.rpartition(":")
    try:
        scenario = Scenario.load(Path(args.scenario) if args.scenario else None)
    except (OSError, ValueError, TypeError) as exc:
        print(f"dispatch gateway-sim: scenario {args.scenario}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signing = os.environ.get("DISPATCH_GATEWAY_SIGNING_SECRET") or secret
    sim = GatewaySim(
        dispatch_url=_server(args), token=token, secret=secret, signing_secret=signing, scenario=scenario, echo=True
    )
    print(f"gateway simulator on http://{args.listen} -> dispatch {_server(args)}", flush=True)
    try:
        asyncio.run(serve(sim, host or "127.0.0.1", int(port)))
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_sip(args: argparse.Namespace) -> int:
    from dispatch.observe import logging as dlog
    from dispatch.settings import SettingsError, SipSettings
    from dispatch.sip.app import run_bridge
    from dispatch.sip.baresip import EngineError
    from dispatch.sip.speech import SpeechError

    try:
        settings = SipSettings.from_env(http=args.http, listen=args.listen, proxy=args.proxy, dispatch_url=args.server)
    except SettingsError as exc:
        print(f"dispatch sip: {exc}", file=sys.stderr)
        return EXIT_USAGE
    dlog.configure(settings.log_format, settings.log_level)
    try:
        return asyncio.run(run_bridge(settings))
    except (EngineError, SpeechError) as exc:
        print(f"dispatch sip: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from dispatch.cli.tokens import run_tokens

    return asyncio.run(run_tokens(_quiet_settings(args), args))


def cmd_people(args: argparse.Namespace) -> int:
    from dispatch.cli.people import run_people
    from dispatch.observe import logging as dlog

    settings = _settings(args)
    dlog.configure(settings.log_format, "warning")
    return asyncio.run(run_people(settings, args))


def cmd_replay(args: argparse.Namespace) -> int:
    from dispatch.cli.replay import replay

    return asyncio.run(replay(_quiet_settings(args)))


def cmd_log_copy(args: argparse.Namespace) -> int:
    from dispatch.cli.copy import run_copy
    from dispatch.store.connect import NatsAuth

    settings = _quiet_settings(args)
    to = [u.strip() for u in args.to.split(",") if u.strip()]
    if not to or not all(u.startswith(("nats://", "tls://")) for u in to):
        raise CliError(f"--to {args.to!r}: give the target's NATS URLs, e.g. nats://dispatch:PASSWORD@nats-1:4222,...")
    auth = NatsAuth(
        creds_file=Path(args.to_creds) if args.to_creds else None,
        tls_ca=Path(args.to_tls_ca) if args.to_tls_ca else None,
    )
    return asyncio.run(run_copy(settings, to, auth, args.replicas, seal=args.seal))


# --- client commands -------------------------------------------------------------------------------


CALL_STATUS = {
    "raised": "新警情：全组正在被通知 (a new incident: the whole group is being alerted)",
    "merged": "并入该报警人正在处理的警情 (merged into the caller's open incident)",
    "unregistered": "未登记号码：已转派出所值班室 (an unregistered number: sent to the station's duty desk)",
}


def cmd_call(args: argparse.Namespace) -> int:
    import uuid

    body: dict[str, Any] = {
        "call_id": args.call_id or f"cli-{uuid.uuid4().hex[:12]}",
        "caller": args.caller,
        "callee": args.callee,
        "channel": "api",
    }
    answer = _fetch(args, "POST", "/v1/calls", expect=202, json=body)
    return _print_opened(
        args,
        answer,
        CALL_STATUS.get(answer["status"], answer["status"]),
        f"同一通话重复上报，无人被重复呼叫 (call id {body['call_id']} was seen before: nobody rung twice)",
    )


def _print_opened(args: argparse.Namespace, answer: dict[str, Any], status: str, again: str) -> int:
    """The service's answer to a call or an opened incident: JSON with --json, else the incident,
    what became of it, `again` when the same call or report was seen before, and how to show it."""
    if args.json:
        _print_json(answer)
        return 0
    print(f"警情 incident {answer['incident_id']}")
    print(f"  {status}")
    if answer.get("duplicate"):
        print(f"  {again}")
    print(f"  查看 show it: dispatch incident {answer['incident_id']}")
    return 0


ORIGIN_ALIASES = {
    "walk-in": "walk_in",
    "walk_in": "walk_in",
    "来所": "walk_in",
    "110": "transfer_110",
    "transfer_110": "transfer_110",
    "110转警": "transfer_110",
}


def cmd_open(args: argparse.Namespace) -> int:
    import uuid

    origin = ORIGIN_ALIASES.get(args.origin)
    if origin is None:
        print(f"--origin must be one of walk-in, 110 (got {args.origin!r})", file=sys.stderr)
        return 2
    body: dict[str, Any] = {
        "report_id": args.report_id or f"cli-{uuid.uuid4().hex[:12]}",
        "village": args.village,
        "group": args.group,
        "origin": origin,
        "caller": args.caller or "",
        "caller_name": args.name or "",
    }
    answer = _fetch(args, "POST", "/v1/incidents", expect=201, json=body)
    return _print_opened(
        args,
        answer,
        f"已登记并通知 {args.village}/{args.group} (opened; the group is alerted as for a call)",
        f"同一登记重复提交 (report id {body['report_id']} was seen before: nobody rung twice)",
    )


def cmd_drill(args: argparse.Namespace) -> int:
    import uuid
    from datetime import datetime

    from dispatch.domain.timezones import DEFAULT_TIME_ZONE, human_time, zone

    if args.cancel:
        answer = _fetch(args, "DELETE", f"/v1/drills/{args.cancel}")
        if args.json:
            _print_json(answer)
            return 0
        print(f"演练 drill {args.cancel}: {answer['status']} ({answer['village']}/{answer['group']})")
        return 0
    if not args.village or not args.group:
        print("dispatch drill VILLAGE GROUP [--at TIME], or dispatch drill --cancel DRILL_ID", file=sys.stderr)
        return 2
    body: dict[str, Any] = {
        "drill_id": args.drill_id or f"cli-{uuid.uuid4().hex[:12]}",
        "village": args.village,
        "group": args.group,
    }
    if args.at:
        try:
            at = datetime.fromisoformat(args.at.replace("Z", "+00:00"))
        except ValueError:
            print(f"--at must be a date and time like 2026-12-05T09:30 (got {args.at!r})", file=sys.stderr)
            return 2
        if at.tzinfo is None:
            at = at.replace(tzinfo=zone(args.time_zone or DEFAULT_TIME_ZONE))
        body["at"] = at.isoformat()
    answer = _fetch(args, "POST", "/v1/drills", expect=201, json=body)
    if args.json:
        _print_json(answer)
        return 0
    print(f"演练 drill {answer['drill_id']}")
    if answer["status"] == "scheduled":
        print(f"  已安排 scheduled for {args.village}/{args.group} at {human_time(answer['due_at'])}")
        print(f"  取消 call it off: dispatch drill --cancel {answer['drill_id']}")
    else:
        print(f"  警情 incident {answer['incident_id']}")
        print(f"  已发起并通知 {args.village}/{args.group} (every message says 演练 first)")
        print(f"  查看 show it: dispatch incident {answer['incident_id']}")
    if answer.get("duplicate"):
        print(f"  同一演练重复提交 (drill id {body['drill_id']} was seen before: nobody rung twice)")
    return 0


def cmd_respond(args: argparse.Namespace) -> int:
    body = {"responder": args.responder, "action": args.action, "note": args.note or ""}
    if args.category:
        body["category"] = args.category
    if args.reason:
        body["reason"] = args.reason
    answer = _fetch(args, "POST", f"/v1/incidents/{args.incident_id}/responses", json=body)
    if args.json:
        _print_json(answer)
        return 0
    from dispatch.domain.messages import STATUS_ZH

    recorded = ", ".join(answer.get("recorded") or []) or "nothing new (already recorded)"
    covered = "已覆盖 covered" if answer["covered"] else "未覆盖 not covered"
    status = answer["status"]
    print(f"已记录 recorded: {recorded}")
    print(f"警情 incident {answer['incident_id']}: {STATUS_ZH.get(status, status)} ({status}), {covered}")
    return 0


def cmd_incident(args: argparse.Namespace) -> int:
    data = _fetch(args, "GET", f"/v1/incidents/{args.incident_id}")
    if args.json or args.format == "json":
        _print_json(data)
        return 0
    from dispatch.domain.timezones import human_time

    zone = data.get("time_zone")
    print(f"{data['incident_id']}  {data['status_zh']} ({data['status']})  {'已覆盖' if data['covered'] else '未覆盖'}")
    if zone:
        print(f"  时区 time zone: {zone}")
    for entry in data["timeline"]:
        print(f"  {entry.get('at_text') or human_time(entry['at'], zone)}  {entry['text']}")
    return 0


BROADCAST_KINDS_ZH = {"台风": "typhoon", "洪水": "flood", "走失儿童": "missing_child", "其他": "other"}


def cmd_broadcast_send(args: argparse.Namespace) -> int:
    import uuid

    body: dict[str, Any] = {
        "id": args.id or f"cli-{uuid.uuid4().hex[:16]}",
        "villages": args.villages,
        "kind": BROADCAST_KINDS_ZH.get(args.kind, args.kind),
        "message": args.message,
        "channels": args.channels.split(",") if args.channels else [],
    }
    answer = _fetch(args, "POST", "/v1/broadcasts", expect=201, json=body)
    if args.json:
        _print_json(answer)
        return 0
    n, villages, channels = answer["counts"]["recipients"], ", ".join(answer["villages"]), ", ".join(answer["channels"])
    print(f"已开始发送预警 broadcast {answer['id']}: {n} 人 ({villages}; {channels})")
    print(f"查看 report: dispatch broadcast report {answer['id']}")
    return 0


def cmd_broadcast_report(args: argparse.Namespace) -> int:
    if args.csv:
        response = _request(args, "GET", f"/v1/broadcasts/{args.broadcast_id}", params={"format": "csv"})
        if response.status_code != 200:
            _fetch(args, "GET", f"/v1/broadcasts/{args.broadcast_id}", params={"format": "csv"})
        sys.stdout.write(response.text)
        return 0
    data = _fetch(args, "GET", f"/v1/broadcasts/{args.broadcast_id}")
    if args.json:
        _print_json(data)
        return 0
    c = data["counts"]
    handed = ", ".join(f"{ch} {c['handed'][ch]}" for ch in data["channels"])
    failed = ", ".join(f"{ch} {c['failed'][ch]}" for ch in data["channels"])
    print(f"{data['id']}  {data['kind']}  {data['message']}")
    print(f"  对象 recipients {c['recipients']}  已送达 handed: {handed}  失败 failed: {failed}")
    print(f"  已确认收到 heard {c['heard']}  发送中 pending {c['pending']}")
    for row in data["people"]:
        states = "  ".join(f"{ch}:{row[ch]}" for ch in data["channels"])
        heard = f"已确认 {row['heard_via']} {row['heard_at']}" if row["heard"] else "未确认"
        print(f"  {row['phone']}  {row['name']}  {states}  {heard}")
    return 0


def cmd_groups_import(args: argparse.Namespace) -> int:
    from dispatch.cli.groups import run_import

    return run_import(args, _request, _refusal_hint)


def cmd_groups_dissolve(args: argparse.Namespace) -> int:
    from dispatch.cli.groups import run_dissolve

    return run_dissolve(args, _request, _fetch)


def cmd_groups_list(args: argparse.Namespace) -> int:
    params = {"village": args.village} if args.village else None
    from dispatch.reports.render import align

    rows = [
        [f"{g['village']}/{g['group']}", f"{g['size']} numbers", f"leader {g['leader'] or '-'}"]
        for g in _fetch(args, "GET", "/v1/groups", params=params)["groups"]
    ]
    for line in align(rows):
        print(line)
    return 0


def cmd_groups_show(args: argparse.Namespace) -> int:
    data = _fetch(args, "GET", f"/v1/groups/{args.village}/{args.group}")
    if args.format == "json":
        _print_json(data)
        return 0
    from dispatch.reports.render import align

    # `size` counts the group's members; the village's duty desks are listed (and rung) too
    rows = [[m["role_zh"], m["name"], m["phone"]] for m in data["members"]]
    rows += [["值班室", d["name"], d["phone"]] for d in data["duty_desks"]]
    desks = f", {len(data['duty_desks'])} duty desk" if data["duty_desks"] else ""
    print(f"{data['village']}/{data['group']}  ({len(rows)} numbers: {data['size']} members{desks})")
    for line in align(rows, indent="  "):
        print(line)
    return 0


def cmd_members_absent(args: argparse.Namespace) -> int:
    from dispatch.cli.members import run_absent

    return run_absent(args, _fetch)


def cmd_members_back(args: argparse.Namespace) -> int:
    from dispatch.cli.members import run_back

    return run_back(args, _fetch)


def cmd_members_absences(args: argparse.Namespace) -> int:
    from dispatch.cli.members import run_list

    return run_list(args, _fetch)


def cmd_villages_settings(args: argparse.Namespace) -> int:
    from dispatch.cli.villages import run_settings

    return run_settings(args, _request, _answered)


def cmd_villages_list(args: argparse.Namespace) -> int:
    from dispatch.cli.villages import run_list

    return run_list(args, _fetch)


def cmd_report(args: argparse.Namespace) -> int:
    from dispatch.cli.report import run_report

    return run_report(args, _fetch)


def cmd_audit(args: argparse.Namespace) -> int:
    from dispatch.cli.audit import run_audit

    return run_audit(args, _fetch)


def cmd_projections(args: argparse.Namespace) -> int:
    from dispatch.cli.projections import run_command

    return run_command(_quiet_settings(args), args)


CATEGORIES = {en: en for en in CATEGORY_ZH} | {zh: en for en, zh in CATEGORY_ZH.items()}
REASONS = {en: en for en in CANCEL_ZH} | {zh: en for en, zh in CANCEL_ZH.items()}
ACTION_ZH = {"accept": "接警", "decline": "无法前往", "arrived": "已到场", "resolve": "处置完毕", "cancel": "取消报警"}
ACTIONS = {en: en for en in ACTION_ZH} | {zh: en for en, zh in ACTION_ZH.items()}


def _alias(kind: str, names: dict[str, str]) -> Callable[[str], str]:
    """An argparse type: an English name, or the Chinese name the console shows, read as the English one."""

    def read(text: str) -> str:
        key = names.get(text.strip()) or names.get(text.strip().lower())
        if key is None:
            shown = ", ".join(f"{en} ({zh})" for zh, en in names.items() if zh != en)
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind}: one of {shown}")
        return key

    read.__name__ = kind
    return read


def _choices(names: dict[str, str]) -> str:
    return ", ".join(f"{en} {zh}" for zh, en in names.items() if zh != en)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; option help wrapped."""


def _add(
    sub: Any, name: str, summary: str, description: str, examples: list[str] | None = None
) -> argparse.ArgumentParser:
    """A subcommand with a one-line summary (in its parent's list), a description and examples."""
    epilog = None
    if examples:
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
        epilog=epilog,
        formatter_class=_Formatter,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch",
        description=(
            "6995 joint-defence linked-alarm dispatch: one call to 6995 alerts the caller's whole group.\n\n"
            "`dispatch serve` runs the service; the client commands (call, respond, incident, groups, report)\n"
            "talk to it over HTTP; tokens, replay and projections work on its log directly.\n"
            "Exit status: 0 done, 1 refused by the service, 2 bad usage or settings, 3 service unreachable."
        ),
        epilog=(
            "first steps:\n"
            "  dispatch serve                                  # in one terminal: the service\n"
            "  dispatch groups import roster.csv               # in another, from the same directory\n"
            "  dispatch call 13800000001                       # what the telephony gateway sends\n"
            "  dispatch demo                                   # or: the whole story on a demo village\n\n"
            "`dispatch COMMAND --help` describes each command, with examples."
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"dispatch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def service_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="data directory (DISPATCH_DATA_DIR, default ./dispatch-data)")
        p.add_argument("--nats-url", help="NATS URL(s), comma-separated (DISPATCH_NATS_URL); none: embedded server")
        p.add_argument("--database-url", help="sqlite:///PATH or postgresql://... (DISPATCH_DATABASE_URL)")
        p.add_argument("--nats-user", help="NATS user (DISPATCH_NATS_USER; the password only from the environment)")
        p.add_argument("--nats-creds", help="NATS creds file: JWT and nkey seed (DISPATCH_NATS_CREDS)")
        p.add_argument("--nats-tls-ca", help="CA certificate(s) to verify the NATS server (DISPATCH_NATS_TLS_CA)")
        p.add_argument("--nats-tls-cert", help="client certificate for NATS (DISPATCH_NATS_TLS_CERT)")
        p.add_argument("--nats-tls-key", help="the client certificate's key (DISPATCH_NATS_TLS_KEY)")

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--server", help="the service's URL, http://HOST:PORT (DISPATCH_SERVER; default http://DISPATCH_HTTP)"
        )
        p.add_argument(
            "--token", help="bearer token (DISPATCH_TOKEN; default: the admin token in <data dir>/admin.token)"
        )
        return p

    def json_flag(p: argparse.ArgumentParser, what: str = "print the service's JSON answer") -> None:
        p.add_argument("--json", action="store_true", help=what)

    def format_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=["table", "json"], default="table", help="table (default) or json")

    def incident_id(p: argparse.ArgumentParser) -> None:
        p.add_argument("incident_id", help="the incident's id (printed by `dispatch call`, shown in the console)")

    def village_and_group(p: argparse.ArgumentParser) -> None:
        p.add_argument("village", help="the village, as in the roster")
        p.add_argument("group", help="the group, as in the roster")

    p = _add(
        sub,
        "serve",
        "run the service: HTTP API, console, handlers, read models",
        "With no NATS URL it starts its own nats-server on the data directory, with SQLite read models\n"
        "beside it, and issues an admin token into <data dir>/admin.token on the first start.\n"
        "Every setting is also a DISPATCH_* variable (README.md, Configuration). Stop it with Ctrl-C.",
        [
            "dispatch serve --simulate-phones                # a first look: virtual phones ring in this terminal",
            "dispatch serve",
            "dispatch serve --http 0.0.0.0:8080 --data-dir /var/lib/dispatch",
            "dispatch serve --nats-url nats://n1:4222,nats://n2:4222,nats://n3:4222 \\\n"
            "      --database-url 'postgresql://dispatch@db/dispatch?schema=dispatch'",
        ],
    )
    service_options(p)
    p.add_argument("--http", help="listen address HOST:PORT (DISPATCH_HTTP, default 127.0.0.1:8080)")
    p.add_argument(
        "--simulate-phones",
        action="store_true",
        help="ring the gateway simulator's virtual phones, printed in this terminal, instead of a telephony "
        "gateway (DISPATCH_SIMULATE_PHONES=1): for a first look, labelled 模拟 (simulation) everywhere; "
        "no real phone rings and /readyz stays 503",
    )
    p.set_defaults(func=cmd_serve)

    p = _add(
        sub,
        "demo",
        "the whole story on a demo village, printed",
        "Starts a private service and gateway simulator in a temporary directory, imports a roster of\n"
        "three groups, places a call, and prints what every phone does, the timeline and a report.",
        ["dispatch demo", "dispatch demo --keep"],
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's data directory (its path is printed)")
    p.add_argument(
        "--sip", action="store_true", help="over real SIP: kamailio, baresip phones and `dispatch sip` (when installed)"
    )
    p.set_defaults(func=cmd_demo)

    p = _add(
        sub,
        "gateway-sim",
        "a telephony gateway with virtual phones (docs/gateway.md)",
        "Answers dispatch's voice and SMS requests like a real gateway and plays each virtual phone as\n"
        "the scenario says (answer, press 1, stay silent, be busy). Point DISPATCH_CHANNELS_FILE's\n"
        "[gateway].url at it. Needs a gateway token and the shared secret.",
        [
            "DISPATCH_GATEWAY_TOKEN=dsp_... DISPATCH_GATEWAY_SECRET=s3cret dispatch gateway-sim",
            "dispatch gateway-sim --scenario docs/examples/phones.toml --listen 127.0.0.1:9100",
        ],
    )
    p.add_argument("--listen", default="127.0.0.1:9100", help="HOST:PORT to listen on (default 127.0.0.1:9100)")
    p.add_argument("--server", help="the dispatch URL (DISPATCH_SERVER, default http://DISPATCH_HTTP)")
    p.add_argument("--token", help="a gateway token (DISPATCH_GATEWAY_TOKEN)")
    p.add_argument("--scenario", help="TOML file: how each virtual phone behaves (docs/examples/phones.toml)")
    p.set_defaults(func=cmd_gateway_sim)

    p = _add(
        sub,
        "sip",
        "the SIP telephony bridge: a trunk or PBX on one side, dispatch on the other",
        "Runs beside a SIP trunk, PBX or registrar: a call to the service number becomes an alarm, and\n"
        "dispatch's voice calls ring real phones through baresip (docs/telephony.md). Point\n"
        "DISPATCH_CHANNELS_FILE's [gateway].url at its --http address. Settings: DISPATCH_SIP_*.",
        [
            "DISPATCH_SIP_TOKEN=dsp_... DISPATCH_GATEWAY_SECRET=s3cret dispatch sip --proxy 10.0.0.5:5060",
            "DISPATCH_SIP_REGISTER=no dispatch sip --listen 0.0.0.0:5060 --proxy trunk.carrier.example",
        ],
    )
    p.add_argument("--http", help="the gateway API's HOST:PORT (DISPATCH_SIP_HTTP, default 127.0.0.1:9100)")
    p.add_argument("--listen", help="the SIP HOST:PORT (DISPATCH_SIP_LISTEN, default 0.0.0.0:5080)")
    p.add_argument("--proxy", help="the trunk, PBX or registrar HOST:PORT (DISPATCH_SIP_PROXY)")
    p.add_argument("--server", help="the dispatch URL (DISPATCH_SIP_DISPATCH_URL, default http://127.0.0.1:8080)")
    p.set_defaults(func=cmd_sip)

    p = _add(
        sub,
        "replay",
        "drop and rebuild every read model from the log",
        "Run it with the service stopped. The log is the record; the SQL read models are rebuilt from it\n"
        "exactly (progress on stderr, the counts at the end).",
        ["dispatch replay", "dispatch replay --database-url 'postgresql://dispatch@db/dispatch'"],
    )
    service_options(p)
    p.set_defaults(func=cmd_replay)

    log = _add(
        sub,
        "log",
        "the log itself: copy it to another NATS",
        "The JetStream streams are the system of record (docs/operations.md).",
        ["dispatch log copy --to nats://dispatch:PW@nats-1:4222,nats://dispatch:PW@nats-2:4222"],
    ).add_subparsers(dest="log_command", required=True, metavar="SUBCOMMAND")
    p = _add(
        log,
        "copy",
        "copy the whole log to an unused NATS (a pilot's embedded server to the cluster)",
        "Run it with the service stopped. Every stream is copied in order, with the position of every\n"
        "consumer, so nothing handled is handled again and no pending deadline or delivery is lost.\n"
        "The source is the data directory's embedded server (or --nats-url ...). Then start the\n"
        "service against the target with DISPATCH_STREAM_REPLICAS=3 (docs/migration.md).",
        [
            "dispatch log copy --data-dir ./dispatch-data \\\n"
            "      --to nats://dispatch:PW@nats-1:4222,nats://dispatch:PW@nats-2:4222,nats://dispatch:PW@nats-3:4222",
        ],
    )
    service_options(p)
    p.add_argument("--to", required=True, help="the target's NATS URL(s), comma-separated, user:password@ in them")
    p.add_argument("--to-creds", help="a creds file (JWT and nkey seed) for the target, instead of a password")
    p.add_argument("--to-tls-ca", help="the CA that signed the target's TLS certificates")
    p.add_argument("--replicas", type=int, default=3, help="replicas of each stream on the target (default 3)")
    p.add_argument(
        "--seal",
        action="store_true",
        help="seal the personal fields of events written before sealing (the migration: docs/migration.md)",
    )
    p.set_defaults(func=cmd_log_copy)

    projections = _add(
        sub,
        "projections",
        "the SQL read models: run a read-side worker, or show where each stands",
        "Reports come from read models that follow the log; these commands run or inspect them.",
        ["dispatch projections status", "dispatch projections run --database-url postgresql://..."],
    ).add_subparsers(dest="projections_command", required=True, metavar="SUBCOMMAND")
    p = _add(
        projections,
        "run",
        "keep the read models up to date, nothing else (a read-side worker)",
        "For DISPATCH_READ_MODELS=elsewhere: the alarm process keeps no read models, this one does.",
        ["dispatch projections run --nats-url nats://n1:4222 --database-url postgresql://..."],
    )
    service_options(p)
    p.set_defaults(func=cmd_projections)
    p = _add(
        projections,
        "status",
        "each read model: active, building or retired, and how far behind the log",
        "`*` marks the active version of each read model; `since` is when it entered its state.",
        ["dispatch projections status", "dispatch projections status --data-dir /var/lib/dispatch"],
    )
    service_options(p)
    p.set_defaults(func=cmd_projections)

    tokens = _add(
        sub,
        "tokens",
        "access tokens: create, list, revoke (works on the log directly)",
        "Works with or without a running service. A token is shown once, when it is created.",
        ["dispatch tokens create --name 吴建军 --role officer --villages 东山村", "dispatch tokens list"],
    ).add_subparsers(dest="tokens_command", required=True, metavar="SUBCOMMAND")
    p = _add(
        tokens,
        "create",
        "issue a token; it is printed once",
        "Roles: gateway places calls and relays answers; officer and duty_desk read and answer for their\n"
        "villages; admin does everything; metrics reads /metrics. The villages must be in the roster\n"
        "(import it first), unless --new-village.",
        [
            "dispatch tokens create --name 吴建军 --phone 13900000009 --role officer --villages 东山村,西山村",
            "dispatch tokens create --name 镇派出所 --role duty_desk --station 07318451234",
            "dispatch tokens create --name 网关 --role gateway",
        ],
    )
    service_options(p)
    p.add_argument("--name", required=True, help="who holds the token (a person or a system), shown in `tokens list`")
    p.add_argument("--role", required=True, choices=list(ROLES), help="what it may do: " + ", ".join(ROLES))
    p.add_argument("--villages", default="", help="comma-separated villages it sees (officer, duty_desk)")
    p.add_argument("--station", help="duty desk number: its villages follow the roster (duty_desk)")
    p.add_argument(
        "--new-village",
        action="store_true",
        help="issue it even though a village is not in the roster yet (imported later)",
    )
    p.add_argument(
        "--phone",
        help="the number of the person it is for: answers through it for that number are their own, others proxy",
    )
    p.set_defaults(func=cmd_tokens)
    p = _add(
        tokens,
        "list",
        "active tokens (never their secrets)",
        "Times are in DISPATCH_TIME_ZONE.",
        ["dispatch tokens list"],
    )
    service_options(p)
    p.set_defaults(func=cmd_tokens)
    p = _add(
        tokens,
        "revoke",
        "revoke a token by id",
        "The token stops working at once in every process, and open consoles signed in with it close.",
        ["dispatch tokens revoke 3f2a9c1b7d04"],
    )
    service_options(p)
    p.add_argument("token_id", help="the token's id: the `id` column of `dispatch tokens list`")
    p.set_defaults(func=cmd_tokens)

    people = _add(
        sub,
        "people",
        "personal data: erase a person (admin; works on the log directly, audited)",
        "A person's numbers, names and notes are stored encrypted under their own key; erasing deletes\n"
        "the key, so every copy in the log reads as 已删除 (docs/security.md).",
        ["dispatch people erase 13800000007"],
    ).add_subparsers(dest="people_command", required=True, metavar="SUBCOMMAND")
    p = _add(
        people,
        "erase",
        "erase a number: delete its key, overwrite its dead letters, rebuild the read models",
        "Refused while the number is in a group (import a roster without it first). With the service\n"
        "stopped the read models are rebuilt at once; with it running, stop it and run `dispatch replay`.",
        ["dispatch people erase 13800000007", "dispatch people erase +8613800000007 --no-replay"],
    )
    service_options(p)
    p.add_argument("number", help="the phone number to erase (13800000007, +8613800000007)")
    p.add_argument("--no-replay", action="store_true", help="do not rebuild the read models now")
    p.set_defaults(func=cmd_people)

    p = client(
        _add(
            sub,
            "call",
            "place a call to the short number, as the telephony gateway would",
            "The caller's whole group is alerted; an unregistered number goes to the duty desk. The same\n"
            "--call-id sent twice is one call (nobody is rung twice).",
            ["dispatch call 13800000001", "dispatch call 13800000001 --call-id gw-20261204-0001 --json"],
        )
    )
    p.add_argument("caller", help="the calling phone number (13800000001, +8613800000001, 0086...)")
    p.add_argument("--callee", default="6995", help="the number dialled (default 6995)")
    p.add_argument("--call-id", help="the gateway's id for this call, to make retries safe (default: a new one)")
    json_flag(p)
    p.set_defaults(func=cmd_call)

    p = client(
        _add(
            sub,
            "drill",
            "raise a drill on a group now, or set one for a date and time (the village's officer, admin)",
            "Every message the group gets says 演练 first; the deadlines run and escalation stops at the\n"
            "station duty desk (never the county). Drills are left out of the response-time and statistics\n"
            "reports; `dispatch report readiness` shows each group's last drill, who answered and how fast.",
            [
                "dispatch drill 东山村 1",
                "dispatch drill 东山村 1 --at 2026-12-05T09:30",
                "dispatch drill --cancel cli-0123456789ab",
            ],
        )
    )
    p.add_argument("village", nargs="?", help="the group's village")
    p.add_argument("group", nargs="?", help="the group")
    p.add_argument("--at", help="when (ISO date and time; without an offset, in --time-zone); default: now")
    p.add_argument("--time-zone", help="the zone of --at when it has no offset (default Asia/Shanghai)")
    p.add_argument("--drill-id", help="an id that makes a retried submission safe (default: a new one)")
    p.add_argument("--cancel", metavar="DRILL_ID", help="call a scheduled drill off")
    p.add_argument("--json", action="store_true", help="print the service's JSON answer")
    p.set_defaults(func=cmd_drill)

    p = client(
        _add(
            sub,
            "open",
            "open an incident for a group: a walk-in report or a 110 transfer (officer, duty desk)",
            "The group is alerted, deadlines run and reports count it as for a member's call; the\n"
            "origin and who opened it (the token's name) are recorded. The reporting person may be in\n"
            "no group: --caller and --name say who they are (both optional).",
            [
                "dispatch open 东山村 1 --origin walk-in --name 张三 --caller 13700000001",
                "dispatch open 东山村 1 --origin 110",
            ],
        )
    )
    village_and_group(p)
    p.add_argument("--origin", required=True, help="walk-in (来所) or 110 (110转警)")
    p.add_argument("--caller", help="the reporting person's phone number, if any")
    p.add_argument("--name", help="the reporting person's name, if known")
    p.add_argument("--report-id", help="an id that makes a retried submission safe (default: a new one)")
    json_flag(p)
    p.set_defaults(func=cmd_open)

    p = client(
        _add(
            sub,
            "respond",
            "answer an incident on behalf of a responder",
            "What a member does with the keypad, a text or the console. Actions: accept (接警), decline\n"
            "(无法前往), arrived (已到场), resolve (处置完毕, with --category), cancel (取消报警, with --reason).\n"
            "Chinese names are accepted for actions, categories and reasons, as the console shows them.",
            [
                "dispatch respond 0193a8c2-... 13900000009 accept",
                "dispatch respond 0193a8c2-... 13900000009 resolve --category 纠纷 --note 邻里纠纷，已调解",
                "dispatch respond 0193a8c2-... 13900000009 cancel --reason drill",
            ],
        )
    )
    incident_id(p)
    p.add_argument("responder", help="the phone number of the member answering")
    p.add_argument(
        "action",
        type=_alias("action", ACTIONS),
        choices=list(ACTION_ZH),
        help="accept, decline, arrived, resolve or cancel (or 接警, 无法前往, 已到场, 处置完毕, 取消报警)",
    )
    p.add_argument(
        "--category",
        type=_alias("category", CATEGORIES),
        help="resolve: what it was: " + _choices(CATEGORIES),
    )
    p.add_argument("--reason", type=_alias("reason", REASONS), help="cancel: why: " + _choices(REASONS))
    p.add_argument("--note", help="resolve, cancel: a free-text note kept with the incident")
    json_flag(p)
    p.set_defaults(func=cmd_respond)

    p = client(
        _add(
            sub,
            "incident",
            "show an incident and its timeline",
            "Times are in the village's time zone, with its UTC offset.",
            ["dispatch incident 0193a8c2-...", "dispatch incident 0193a8c2-... --json"],
        )
    )
    incident_id(p)
    format_option(p)
    json_flag(p, "the same as --format json")
    p.set_defaults(func=cmd_incident)

    broadcast = _add(
        sub,
        "broadcast",
        "warn whole villages by voice and SMS, and see who heard (admin; officer: own villages)",
        "Every member of the villages is called and texted; pressing 1 on the call or replying 1 to\n"
        "the text confirms they heard. Alarms always go first: a broadcast waits while one rings.",
        [
            "dispatch broadcast send 东山村 西山村 --kind 台风 --message 台风今晚登陆，请转移到村委会",
            "dispatch broadcast report ID",
        ],
    ).add_subparsers(dest="broadcast_command", required=True, metavar="SUBCOMMAND")
    p = client(
        _add(
            broadcast,
            "send",
            "start a broadcast to every member of one or more villages",
            "Kinds: typhoon (台风), flood (洪水), missing_child (走失儿童), other (其他). The message is\n"
            "spoken on the call and sent as a text, with how to confirm (press or reply 1).",
            [
                "dispatch broadcast send 东山村 --kind 洪水 --message 水库泄洪，沿河住户请立即撤离",
                "dispatch broadcast send 东山村 --kind missing_child --message 寻找5岁男孩 --channels sms",
            ],
        )
    )
    p.add_argument("villages", nargs="+", help="the villages to warn, as in the roster")
    p.add_argument("--kind", required=True, help="typhoon, flood, missing_child, other (or 台风, 洪水, 走失儿童, 其他)")
    p.add_argument("--message", required=True, help="the warning, at most 300 characters")
    p.add_argument("--channels", help="voice,sms (default: every broadcast channel configured)")
    p.add_argument("--id", help="an id that makes a retried submission safe (default: a new one)")
    json_flag(p)
    p.set_defaults(func=cmd_broadcast_send)
    p = client(
        _add(
            broadcast,
            "report",
            "a broadcast's counts and, per person, each channel's outcome and the receipt",
            "Numbers are masked unless the token may export personal data (admin); --csv needs admin.",
            ["dispatch broadcast report ID", "dispatch broadcast report ID --csv > heard.csv"],
        )
    )
    p.add_argument("broadcast_id", help="the broadcast's id (printed by `dispatch broadcast send`)")
    p.add_argument("--csv", action="store_true", help="print the report as CSV (admin)")
    json_flag(p)
    p.set_defaults(func=cmd_broadcast_report)

    groups = _add(
        sub,
        "groups",
        "joint-defence groups: import the roster, dissolve, list, show",
        "The roster is a CSV file: village,group,phone,role,name (README.md, The roster).",
        ["dispatch groups import roster.csv", "dispatch groups show 东山村 1"],
    ).add_subparsers(dest="groups_command", required=True, metavar="SUBCOMMAND")
    p = client(
        _add(
            groups,
            "import",
            "import a roster CSV (village,group,phone,role,name)",
            "Every error is reported with its line and nothing is applied; otherwise the differences\n"
            "(members bound, unbound, moved) are applied and counted. The file replaces every group it\n"
            "lists: before unbinding anyone it shows whom and asks (--yes: don't ask).",
            [
                "dispatch groups import roster.csv --dry-run",
                "dispatch groups import roster.csv",
                "dispatch groups import roster.csv --yes",
            ],
        )
    )
    p.add_argument("file", help="the roster CSV (UTF-8 or GB18030, as Excel saves it)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print who would be bound, unbound, moved, renamed or given another role; write nothing",
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="unbind the numbers the file leaves out of its groups without asking (needed without a terminal)",
    )
    p.set_defaults(func=cmd_groups_import)
    p = client(
        _add(
            groups,
            "dissolve",
            "dissolve a group: its members unbound, its open incidents kept",
            "Shows the group and asks first (--yes: don't ask). Incidents already raised on the group\n"
            "can still be answered and closed.",
            ["dispatch groups dissolve 东山村 2"],
        )
    )
    village_and_group(p)
    p.add_argument("--yes", action="store_true", help="dissolve without showing the group and asking")
    p.set_defaults(func=cmd_groups_dissolve)
    p = client(
        _add(
            groups,
            "list",
            "list groups",
            "Each group with its number of members and its leader.",
            ["dispatch groups list", "dispatch groups list --village 东山村"],
        )
    )
    p.add_argument("--village", help="only this village's groups")
    p.set_defaults(func=cmd_groups_list)
    p = client(
        _add(
            groups,
            "show",
            "show one group: its members and its village's duty desks",
            "Everyone an alarm from this group rings.",
            ["dispatch groups show 东山村 1"],
        )
    )
    village_and_group(p)
    format_option(p)
    p.set_defaults(func=cmd_groups_show)

    members = _add(
        sub,
        "members",
        "members away: mark one absent with a substitute, end it, list them",
        "While a member is away their groups' alarms ring the substitute instead, in the member's role\n"
        "(the substitute's accept counts for cover in it). Without a substitute, readiness shows the\n"
        "groups left short. Times: RFC 3339, a date-time or date in DISPATCH_TIME_ZONE, or +8h / +3d.",
        ["dispatch members absent 13900000009 --until +3d --substitute 13700000099", "dispatch members absences"],
    ).add_subparsers(dest="members_command", required=True, metavar="SUBCOMMAND")
    p = client(
        _add(
            members,
            "absent",
            "mark a member absent for a period, with the substitute rung in their place",
            "Replaces any absence set before. An officer's token may do it for members of its villages.",
            [
                "dispatch members absent 13900000009 --until +3d --substitute 13700000099 --note 年假",
                "dispatch members absent 13900000009 --from 2026-12-10 --until 2026-12-13 --substitute 13700000099",
            ],
        )
    )
    p.add_argument("number", help="the member's phone number")
    p.add_argument("--until", required=True, help="when they are back (the end is excluded): a time, or +3d")
    p.add_argument("--from", dest="start", help="when they leave (default: now)")
    p.add_argument("--substitute", help="who is rung in their place (any number; none: nobody stands in)")
    p.add_argument("--substitute-name", help="the substitute's name, when the roster does not know them")
    p.add_argument("--note", help="why (年假, 培训...), shown with the absence")
    json_flag(p)
    p.set_defaults(func=cmd_members_absent)
    p = client(
        _add(
            members,
            "back",
            "end a member's absence now: they are rung again",
            "An absence not begun yet is called off. Ending none changes nothing.",
            ["dispatch members back 13900000009"],
        )
    )
    p.add_argument("number", help="the member's phone number")
    json_flag(p)
    p.set_defaults(func=cmd_members_back)
    p = client(
        _add(
            members,
            "absences",
            "list the members away now or soon, with their substitutes",
            "Within the villages the token sees.",
            ["dispatch members absences", "dispatch members absences --village dongshan"],
        )
    )
    p.add_argument("--village", help="only this village's members")
    json_flag(p)
    p.set_defaults(func=cmd_members_absences)

    villages = _add(
        sub,
        "villages",
        "villages: list them, show or change one's settings (deadlines, neighbouring groups)",
        "A village's settings apply to the incidents raised after the change. A setting never set\n"
        "follows the service default: neighbouring groups' leaders and assistants are rung alongside\n"
        "the station when a group cannot reach cover, and their accept does not cover.",
        ["dispatch villages list", "dispatch villages settings 东山村 --neighbours-order before"],
    ).add_subparsers(dest="villages_command", required=True, metavar="SUBCOMMAND")
    p = client(
        _add(
            villages,
            "list",
            "list the villages with groups or settings of their own",
            "Within the villages the token sees.",
            ["dispatch villages list"],
        )
    )
    json_flag(p)
    p.set_defaults(func=cmd_villages_list)
    p = client(
        _add(
            villages,
            "settings",
            "show a village's settings, or change the ones given (admin)",
            "Without options it shows them. Options change only the settings named; `default` or\n"
            "--reset clears one back to the service default. Durations: seconds, or 90s, 5m, 1.5h.\n"
            "--neighbours-order: alongside (the station and the neighbours together; the default),\n"
            "before (the neighbours first, the station a second ack deadline later) or off.",
            [
                "dispatch villages settings 东山村",
                "dispatch villages settings 东山村 --neighbours-order before --neighbour-covers",
                "dispatch villages settings 东山村 --neighbours 1=2,3 --neighbours 4=",
                "dispatch villages settings 东山村 --ack-deadline 90s --reset neighbours",
            ],
        )
    )
    from dispatch.cli.villages import add_settings_arguments

    add_settings_arguments(p)
    p.set_defaults(func=cmd_villages_settings)

    p = client(
        _add(
            sub,
            "report",
            "reports: response-times, history, stats, readiness",
            "The same reports as GET /v1/reports/<kind>, with the same filters. Times are in each\n"
            "village's time zone; --since 2026-11-01 is local midnight.",
            [
                "dispatch report response-times --by village,officer --period month --since 2026-01-01",
                "dispatch report history --village 东山村 --status resolved --category 纠纷",
                "dispatch report stats --period month",
                "dispatch report readiness --last 3 --quiet-days 90",
            ],
        )
    )
    add_report_arguments(p, _alias("category", CATEGORIES))
    p.set_defaults(func=cmd_report)

    p = client(
        _add(
            sub,
            "audit",
            "the audit trail: who read personal data, issued or revoked tokens, changed settings (admin)",
            "The entries of GET /v1/audit, newest first: reads that showed whole numbers, token and\n"
            "settings changes, roster imports and every refusal, each with the token, the channel and\n"
            "the address it came from. Kept DISPATCH_AUDIT_RETENTION_DAYS (365) in their own stream.",
            [
                "dispatch audit --outcome refused --since 2026-11-01",
                "dispatch audit --actor 吴建军 --action incident.read --format csv > audit.csv",
            ],
        )
    )
    add_audit_arguments(p)
    p.set_defaults(func=cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"dispatch {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code
