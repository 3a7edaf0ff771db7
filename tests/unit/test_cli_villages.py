"""`dispatch villages settings`: the options a person types, the settings sent back whole with only
those changed, and a village's settings as the CLI prints them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dispatch.cli import build_parser
from dispatch.cli.villages import duration, merged, neighbours_option, run_settings, show

OVERRIDES: dict[str, Any] = {
    "ack_deadline_s": 90.0,
    "escalate_after_s": None,
    "arrival_deadline_s": None,
    "time_zone": None,
    "proxy_counts": False,
    "neighbours_order": None,
    "neighbour_covers": None,
    "neighbours": {"1": ["2"]},
}


def parsed(*options: str) -> argparse.Namespace:
    return build_parser().parse_args(["villages", "settings", "dongshan", *options])


def test_durations_and_neighbours_read_as_people_type_them() -> None:
    assert [duration(t) for t in ("90", "90s", "5m", "1.5h", "default")] == [90.0, 90.0, 300.0, 5400.0, "default"]
    with pytest.raises(argparse.ArgumentTypeError, match="5m"):
        duration("five minutes")
    assert neighbours_option("1=2,3") == ("1", ["2", "3"])
    assert neighbours_option("1=2，3") == ("1", ["2", "3"]), "a Chinese comma too"
    assert neighbours_option("4=") == ("4", [])
    assert neighbours_option("4=default") == ("4", None)
    with pytest.raises(argparse.ArgumentTypeError, match="GROUP="):
        neighbours_option("2,3")


def test_only_the_settings_named_change_and_the_others_are_sent_back_as_they_were() -> None:
    body = merged(OVERRIDES, parsed("--neighbours-order", "before", "--neighbour-covers"))
    assert body == {**OVERRIDES, "neighbours_order": "before", "neighbour_covers": True}
    assert merged(OVERRIDES, parsed()) == OVERRIDES, "nothing named: nothing changes"
    off = merged(OVERRIDES, parsed("--neighbours-order", "off", "--no-proxy-counts", "--no-neighbour-covers"))
    assert (off["neighbours_order"], off["proxy_counts"], off["neighbour_covers"]) == ("off", False, False)


def test_default_and_reset_clear_an_override_and_neighbours_merge_per_group() -> None:
    body = merged(OVERRIDES, parsed("--ack-deadline", "default", "--reset", "proxy-counts", "--escalate-after", "5m"))
    assert (body["ack_deadline_s"], body["proxy_counts"], body["escalate_after_s"]) == (None, None, 300.0)
    named = merged(OVERRIDES, parsed("--neighbours", "3=1,2", "--neighbours", "4="))["neighbours"]
    assert named == {"1": ["2"], "3": ["1", "2"], "4": []}
    assert merged(OVERRIDES, parsed("--neighbours", "1=default"))["neighbours"] is None, "back to the village's others"
    assert merged(OVERRIDES, parsed("--reset", "all")) == dict.fromkeys(OVERRIDES)
    assert OVERRIDES["neighbours"] == {"1": ["2"]}, "the village's answer is not changed in place"


def test_a_setting_never_set_is_shown_as_the_service_default() -> None:
    view = {
        "village": "dongshan",
        "deadlines": {"ack_deadline_s": 90.0, "escalate_after_s": 300.0, "arrival_deadline_s": 1200.0},
        "time_zone": "Asia/Shanghai",
        "proxy_counts": False,
        "neighbours_order": "alongside",
        "neighbour_covers": False,
        "neighbours": {"1": ["2"], "2": ["1"], "3": []},
        "overrides": {**OVERRIDES, "neighbours": {"1": ["2"], "3": []}},
        "duty_desks": [{"phone": "+8673184512345", "name": "城关派出所值班室"}],
        "groups": ["1", "2", "3"],
    }
    lines = show(view)
    text = "\n".join(lines)
    assert lines[0] == "dongshan（3 个小组）"
    row = {line.split()[1]: line for line in lines[1:]}
    assert row["ack_deadline_s"].endswith("90 秒") and row["escalate_after_s"].endswith("300 秒（默认）")
    assert row["proxy_counts"].endswith("否")
    assert row["neighbours_order"].endswith("alongside 与派出所同时（默认）")
    assert row["neighbour_covers"].endswith("否（默认）")
    assert "1组 → 2组（指定）；2组 → 1组；3组 → 无（指定）" in text
    assert "城关派出所值班室 +8673184512345" in text


class RacingService:
    """The service's settings routes as the CLI meets them (ETag on GET, If-Match on PUT, 412 when it is
    stale), with another admin's change landing between the CLI's first read and its write."""

    def __init__(self) -> None:
        self.overrides = dict(OVERRIDES)
        self.version = 7
        self.raced = False
        self.puts: list[str] = []

    def request(self, _args: argparse.Namespace, method: str, _path: str, **kwargs: Any) -> httpx.Response:
        if method == "GET":
            view = {"village": "dongshan", "overrides": dict(self.overrides)}
            answer = httpx.Response(200, json=view, headers={"ETag": f'"{self.version}"'})
            if not self.raced:  # the other admin's write lands right after this first read
                self.raced = True
                self.overrides, self.version = {**self.overrides, "neighbours_order": "off"}, self.version + 1
            return answer
        tag = kwargs["headers"]["If-Match"]
        self.puts.append(tag)
        if tag != f'"{self.version}"':
            return httpx.Response(412, json={"error": "changed meanwhile"})
        self.overrides, self.version = dict(kwargs["json"]), self.version + 1
        return httpx.Response(200, json={"village": "dongshan", "overrides": self.overrides})


def test_a_change_made_meanwhile_by_another_admin_is_kept_and_ours_applied_on_top(
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = RacingService()
    answered: Callable[..., Any] = lambda _args, response, expect=200: response.json()  # noqa: E731
    assert run_settings(parsed("--ack-deadline", "2m", "--json"), service.request, answered) == 0
    assert service.puts == ['"7"', '"8"'], "the stale write is refused, then made again on the version read anew"
    assert service.overrides["neighbours_order"] == "off", "the other admin's change was overwritten"
    assert service.overrides["ack_deadline_s"] == 120.0
    assert '"village": "dongshan"' in capsys.readouterr().out
