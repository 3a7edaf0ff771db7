"""What people read and hear: Simplified Chinese first, one sentence of English for the console switch.

Invariant: every alert names who needs help, where (village and group), how to call them back,
and how to answer (keypad / SMS reply / the answer link), within one SMS-sized paragraph.
"""

from __future__ import annotations

from dispatch.events.model import CallRepeated, IncidentOpened, Person, Role, UnregisteredCall

ROLE_ZH: dict[Role, str] = {
    "household": "联防户",
    "leader": "联防组长",
    "assistant": "警务助理",
    "officer": "社区民警",
    "duty": "派出所值班室",
    "command_centre": "指挥中心",
    "unregistered": "未登记号码",
}
ROLE_EN: dict[Role, str] = {
    "household": "household",
    "leader": "group leader",
    "assistant": "police assistant",
    "officer": "community officer",
    "duty": "station duty desk",
    "command_centre": "command centre",
    "unregistered": "unregistered number",
}
CATEGORY_ZH = {
    "criminal": "刑事",
    "public_order": "治安",
    "dispute": "纠纷",
    "help": "求助",
    "traffic": "交通",
    "fire": "火灾",
    "other": "其他",
}
STATUS_ZH = {
    "raised": "已报警",
    "notifying": "通知中",
    "acknowledged": "已接警",
    "on_scene": "已到场",
    "resolved": "已处置",
    "cancelled": "已取消",
}
HOW_TO_ANSWER = "接警请按1或回复“接”，到达现场请按3或回复“到”。"


def place(opened: IncidentOpened) -> str:
    if opened.village and opened.group:
        return f"{opened.village}{opened.group}组"
    if opened.village:
        return opened.village
    return "未知地点"


def who(person: Person) -> str:
    name = person.name or ROLE_ZH.get(person.role, "村民")
    return f"{ROLE_ZH.get(person.role, '')}{name}（{person.phone}）" if person.name else f"{name}（{person.phone}）"


def alert_text(opened: IncidentOpened, repeat: CallRepeated | None = None) -> str:
    """The alert a recipient reads or hears."""
    if isinstance(opened, UnregisteredCall):
        head = f"【6995报警】未登记号码 {opened.caller.phone} 拨打6995求助，请值班室立即回拨核实并处置。"
    else:
        caller = repeat.caller if repeat else opened.caller
        head = f"【6995联防报警】{place(opened)} {who(caller)} 拨打6995求助，请立即前往！"
    if repeat is not None:
        head = f"【再次呼叫·紧急程度{repeat.urgency}】" + head
    return head + HOW_TO_ANSWER


def alert_text_en(opened: IncidentOpened) -> str:
    where = f"{opened.village}/{opened.group}" if opened.group else (opened.village or "unknown place")
    return f"6995 alarm: {ROLE_EN.get(opened.caller.role, '')} {opened.caller.name} ({opened.caller.phone}) at {where} needs help."
