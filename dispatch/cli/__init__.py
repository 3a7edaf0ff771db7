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
from pathlib import Path
from typing import Any

import httpx

from dispatch.cli.report import add_arguments as add_report_arguments
from dispatch.settings import Settings, SettingsError

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def _server(args: argparse.Namespace) -> str:
    if getattr(args, "server", None):
        return str(args.server).rstrip("/")
    if os.environ.get("DISPATCH_SERVER"):
        return os.environ["DISPATCH_SERVER"].rstrip("/")
    http = os.environ.get("DISPATCH_HTTP", "127.0.0.1:8080")
    host, _, port = http.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{port}"


def _token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token", None):
        return str(args.token)
    if os.environ.get("DISPATCH_TOKEN"):
        return os.environ["DISPATCH_TOKEN"]
    path = Path(os.environ.get("DISPATCH_DATA_DIR", "./dispatch-data")) / "admin.token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> httpx.Response:
    url = _server(args) + path
    token = _token(args)
    if token:
        kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": f"Bearer {token}"}
    try:
        return httpx.request(method, url, timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        print(f"cannot reach the dispatch service at {_server(args)}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_UNREACHABLE) from None


def _fetch(args: argparse.Namespace, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> Any:
    """The response's JSON; anything but `expect` is printed as a refusal and exits 1."""
    response = _request(args, method, path, **kwargs)
    if response.status_code == expect:
        return response.json()
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    print(f"refused ({response.status_code}): {body.get('error')}", file=sys.stderr)
    for item in body.get("errors", []):
        print(f"  line {item['line']}: {item['message']}", file=sys.stderr)
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
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from dispatch.bootstrap import run
    from dispatch.observe import logging as dlog

    settings = _settings(args)
    dlog.configure(settings.log_format, settings.log_level)
    asyncio.run(run(settings))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
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


def cmd_tokens(args: argparse.Namespace) -> int:
    from dispatch.cli.tokens import run_tokens
    from dispatch.observe import logging as dlog

    settings = _settings(args)
    dlog.configure(settings.log_format, "warning")
    return asyncio.run(run_tokens(settings, args))


def cmd_replay(args: argparse.Namespace) -> int:
    from dispatch.cli.replay import replay
    from dispatch.observe import logging as dlog

    settings = _settings(args)
    dlog.configure(settings.log_format, "warning")
    return asyncio.run(replay(settings))


# --- client commands -------------------------------------------------------------------------------


def cmd_call(args: argparse.Namespace) -> int:
    import uuid

    body: dict[str, Any] = {
        "call_id": args.call_id or f"cli-{uuid.uuid4().hex[:12]}",
        "caller": args.caller,
        "callee": args.callee,
        "channel": "api",
    }
    _print_json(_fetch(args, "POST", "/v1/calls", expect=202, json=body))
    return 0


def cmd_respond(args: argparse.Namespace) -> int:
    body = {"responder": args.responder, "action": args.action, "note": args.note or ""}
    if args.category:
        body["category"] = args.category
    _print_json(_fetch(args, "POST", f"/v1/incidents/{args.incident_id}/responses", json=body))
    return 0


def cmd_incident(args: argparse.Namespace) -> int:
    data = _fetch(args, "GET", f"/v1/incidents/{args.incident_id}")
    if args.format == "json":
        _print_json(data)
        return 0
    print(f"{data['incident_id']}  {data['status_zh']} ({data['status']})  {'已覆盖' if data['covered'] else '未覆盖'}")
    for entry in data["timeline"]:
        print(f"  {entry['at']}  {entry['text']}")
    return 0


def cmd_groups_import(args: argparse.Namespace) -> int:
    try:
        content = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    summary = _fetch(args, "POST", "/v1/groups/import", content=content, headers={"Content-Type": "text/csv"})[
        "summary"
    ]
    print("imported: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


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


def cmd_report(args: argparse.Namespace) -> int:
    from dispatch.cli.report import run_report

    return run_report(args, _fetch)


def cmd_projections(args: argparse.Namespace) -> int:
    from dispatch.cli.projections import run_command
    from dispatch.observe import logging as dlog

    settings = _settings(args)
    dlog.configure(settings.log_format, "warning")
    return run_command(settings, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatch", description="6995 joint-defence linked-alarm dispatch")
    sub = parser.add_subparsers(dest="command", required=True)

    def service_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="data directory (DISPATCH_DATA_DIR, default ./dispatch-data)")
        p.add_argument("--nats-url", help="NATS URL(s), comma-separated (DISPATCH_NATS_URL); none: embedded server")
        p.add_argument("--database-url", help="sqlite:///PATH or postgresql://... (DISPATCH_DATABASE_URL)")
        p.add_argument("--nats-user", help="NATS user (DISPATCH_NATS_USER; the password only from the environment)")
        p.add_argument("--nats-creds", help="NATS creds file: JWT and nkey seed (DISPATCH_NATS_CREDS)")
        p.add_argument("--nats-tls-ca", help="CA certificate(s) to verify the NATS server (DISPATCH_NATS_TLS_CA)")
        p.add_argument("--nats-tls-cert", help="client certificate for NATS (DISPATCH_NATS_TLS_CERT)")
        p.add_argument("--nats-tls-key", help="the client certificate's key (DISPATCH_NATS_TLS_KEY)")

    p = sub.add_parser("serve", help="run the service: HTTP API, handlers, projections")
    service_options(p)
    p.add_argument("--http", help="listen address HOST:PORT (DISPATCH_HTTP, default 127.0.0.1:8080)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="the whole story on a demo village, printed")
    p.add_argument("--keep", action="store_true", help="keep the demo's data directory")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("gateway-sim", help="a telephony gateway with virtual phones (docs/gateway.md)")
    p.add_argument("--listen", default="127.0.0.1:9100", help="HOST:PORT to listen on")
    p.add_argument("--server", help="dispatch URL (DISPATCH_SERVER, default http://DISPATCH_HTTP)")
    p.add_argument("--token", help="a gateway token (DISPATCH_GATEWAY_TOKEN)")
    p.add_argument("--scenario", help="TOML file: how each virtual phone behaves")
    p.set_defaults(func=cmd_gateway_sim)

    p = sub.add_parser("replay", help="drop and rebuild every projection from the log (service stopped)")
    service_options(p)
    p.set_defaults(func=cmd_replay)

    projections = sub.add_parser("projections", help="the SQL read models").add_subparsers(
        dest="projections_command", required=True
    )
    p = projections.add_parser("run", help="keep the read models up to date, nothing else (a read-side worker)")
    service_options(p)
    p.set_defaults(func=cmd_projections)
    p = projections.add_parser("status", help="each projection version: active, building or retired; how far behind")
    service_options(p)
    p.set_defaults(func=cmd_projections)

    tokens = sub.add_parser("tokens", help="access tokens (works on the log directly)").add_subparsers(
        dest="tokens_command", required=True
    )
    p = tokens.add_parser("create", help="issue a token; it is printed once")
    service_options(p)
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=["gateway", "officer", "duty_desk", "admin", "metrics"])
    p.add_argument("--villages", default="", help="comma-separated villages (officer, duty_desk)")
    p.add_argument("--station", help="duty desk number: its villages follow the roster (duty_desk)")
    p.set_defaults(func=cmd_tokens)
    p = tokens.add_parser("list", help="active tokens (never their secrets)")
    service_options(p)
    p.set_defaults(func=cmd_tokens)
    p = tokens.add_parser("revoke", help="revoke a token by id")
    service_options(p)
    p.add_argument("token_id")
    p.set_defaults(func=cmd_tokens)

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--server", help="service URL (DISPATCH_SERVER, default http://DISPATCH_HTTP)")
        p.add_argument("--token", help="bearer token (DISPATCH_TOKEN, else <data dir>/admin.token)")
        return p

    p = client(sub.add_parser("call", help="simulate a call to the short number"))
    p.add_argument("caller")
    p.add_argument("--callee", default="6995")
    p.add_argument("--call-id")
    p.set_defaults(func=cmd_call)

    p = client(sub.add_parser("respond", help="answer an incident as a responder"))
    p.add_argument("incident_id")
    p.add_argument("responder")
    p.add_argument("action", choices=["accept", "decline", "arrived", "resolve", "cancel"])
    p.add_argument("--category")
    p.add_argument("--note")
    p.set_defaults(func=cmd_respond)

    p = client(sub.add_parser("incident", help="show an incident and its timeline"))
    p.add_argument("incident_id")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_incident)

    groups = sub.add_parser("groups", help="joint-defence groups").add_subparsers(dest="groups_command", required=True)
    p = client(groups.add_parser("import", help="import a roster CSV (village,group,phone,role,name)"))
    p.add_argument("file")
    p.set_defaults(func=cmd_groups_import)
    p = client(groups.add_parser("list", help="list groups"))
    p.add_argument("--village")
    p.set_defaults(func=cmd_groups_list)
    p = client(groups.add_parser("show", help="show one group"))
    p.add_argument("village")
    p.add_argument("group")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_groups_show)

    p = client(sub.add_parser("report", help="reports: response-times, history, stats, readiness"))
    add_report_arguments(p)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code
