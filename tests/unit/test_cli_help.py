"""The CLI teaches: every command has a description and examples, every argument a help text;
Chinese names the console shows are read as their English keys; a bad --server is refused with
what to type instead."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dispatch.cli import CliError, _server, _token_and_source, build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(" ".join(("dispatch", *path)), parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, (*path, name))
    return found


COMMANDS = _commands(build_parser())


def test_every_command_is_walked() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"dispatch call", "dispatch respond", "dispatch tokens revoke", "dispatch projections status"} <= names
    assert len(names) >= 20, sorted(names)


@pytest.mark.parametrize(("name", "parser"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_command_has_a_description_examples_and_help_on_every_argument(
    name: str, parser: argparse.ArgumentParser
) -> None:
    assert parser.description and "\n\n" in parser.description, f"{name}: a summary and a description"
    assert parser.epilog and "dispatch " in parser.epilog, f"{name}: examples"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"{name} {choice.dest}: no summary"
            continue
        what = "/".join(action.option_strings) or action.dest
        assert action.help and len(action.help) > 8, f"{name} {what}: no help text"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("dispatch 0.")


def test_chinese_names_the_console_shows_are_accepted() -> None:
    parse = build_parser().parse_args
    args = parse(["respond", "i", "13900000009", "处置完毕", "--category", "纠纷"])
    assert (args.action, args.category) == ("resolve", "dispute")
    args = parse(["respond", "i", "13900000009", "cancel", "--reason", "演练"])
    assert (args.action, args.reason) == ("cancel", "drill")
    args = parse(["respond", "i", "13900000009", "accept", "--category", "public_order", "--reason", "misdial"])
    assert (args.category, args.reason) == ("public_order", "misdial")
    assert parse(["report", "history", "--category", "治安"]).category == "public_order"


def test_an_unknown_category_lists_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["respond", "i", "1", "resolve", "--category", "吵架"])
    err = capsys.readouterr().err
    assert "'吵架' is not a category" in err and "dispute (纠纷)" in err


def test_a_server_without_a_scheme_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["call", "13800000001", "--server", "10.0.0.5:8080"])
    with pytest.raises(CliError, match=r"--server '10.0.0.5:8080' is not a URL.*e\.g\. http://10\.0\.0\.5:8080"):
        _server(args)
    monkeypatch.setenv("DISPATCH_SERVER", "dispatch.example")
    with pytest.raises(CliError, match=r"DISPATCH_SERVER 'dispatch\.example' is not a URL"):
        _server(build_parser().parse_args(["call", "13800000001"]))
    assert _server(build_parser().parse_args(["call", "1", "--server", "https://d.example/"])) == "https://d.example"


def test_the_token_file_looked_for_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DISPATCH_TOKEN", raising=False)
    monkeypatch.setenv("DISPATCH_DATA_DIR", str(tmp_path / "data"))
    token, source = _token_and_source(build_parser().parse_args(["call", "1"]))
    assert token is None
    assert source == f"no --token, no DISPATCH_TOKEN, and {tmp_path / 'data' / 'admin.token'} does not exist"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin.token").write_text("dsp_x_y\n")
    assert _token_and_source(build_parser().parse_args(["call", "1"])) == (
        "dsp_x_y",
        str(tmp_path / "data" / "admin.token"),
    )
