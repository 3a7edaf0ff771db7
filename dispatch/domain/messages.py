"""What people read and hear: Simplified Chinese first, one sentence of English for the console switch.

Invariant: every alert names who needs help, where (village and group), how to call them back,
and how to answer (keypad / SMS reply / the answer link), within one SMS-sized paragraph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dispatch.domain.delivery import NO_CHANNEL, NO_CHANNEL_CONFIGURED, NO_CHANNEL_ROUTED
from dispatch.domain.directory import group_order
from dispatch.events import model as m
from dispatch.events.model import Person, Role

if TYPE_CHECKING:
    from dispatch.domain.incident import Alert

ROLE_ZH: dict[Role, str] = {
    "household": "联防户",
    "leader": "联防组长",
    "assistant": "警务助理",
    "officer": "社区民警",
    "duty": "派出所值班室",
    "command_centre": "指挥中心",
    "unregistered": "未登记号码",
}
FAILURE_ZH: dict[str, str] = {"permanent": "无法送达", "exhausted": "多次重试仍未送达", "withdrawn": "不再重拨"}
WITHDRAWN_ZH: dict[str, str] = {
    "answered": "已应答",
    "incident closed": "警情已结束",
    NO_CHANNEL_CONFIGURED: "未配置通知渠道",
    NO_CHANNEL_ROUTED: "无可用通知渠道",
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
CANCEL_ZH = {
    "caller_safe": "报警人已安全",
    "misdial": "误拨",
    "duplicate": "重复报警",
    "drill": "演练",
    "other": "其他",
}
HOW_TO_ANSWER = "接警请按1或回复“接”，到达现场请按3或回复“到”。"
NEIGHBOURS_ZH = {
    "ack_deadline": "本组规定时间内未落实接警",
    "escalate_deadline": "本组长时间仍未落实接警",
    "quorum_unreachable": "本组可联系的人员已无法落实接警",
}
ESCALATION_ZH = {
    "station_deadline": "邻组支援后仍未落实接警",
    "ack_deadline": "规定时间内未落实接警",
    "escalate_deadline": "长时间仍未落实接警",
    "arrival_deadline": "接警后未按时到达现场",
    "officer_unreachable": "社区民警无法联系",
}


ORIGIN_ZH = {"walk_in": "群众来所报警", "transfer_110": "110转警", "drill": "联防演练"}
DRILL_HEAD = "【演练】"
DRILL_SPOKEN = "演练，演练，这是联防演练，不是真实警情。"
DRILL_EN = "DRILL (not a real alarm): "
SILENT_HEAD = "【6995静默报警·勿回拨、勿短信报警人】"
SILENT_SPOKEN = "这是静默报警，报警人可能受到威胁，请勿回拨或短信联系报警人。"


def place(village: str | None, group: str | None) -> str:
    """Where an alert is from, as people say it: `东山村1组`."""
    if village and group:
        return f"{village}{group}组"
    return village or "未知地点"


def home(person: Person) -> str:
    """Where a caller the roster places lives, as people say it: `张桂兰家，村东头老槐树旁` ("" when
    the roster gives no address)."""
    address = person.place.address if person.place is not None else ""
    if not address:
        return ""
    return f"{person.name}家，{address}" if person.name else address


def geo_uri(person: Person) -> str:
    """The caller's coordinates as an RFC 5870 `geo:lat,lon` link ("" without coordinates)."""
    place_ = person.place
    if place_ is None or place_.lat is None or place_.lon is None:
        return ""
    return f"geo:{place_.lat},{place_.lon}"


def where_of(village: str | None, group: str | None, caller: Person) -> str:
    """The place and, when the roster gives it, the home: `东山村1组 张桂兰家，村东头老槐树旁`."""
    at_home = home(caller)
    return f"{place(village, group)} {at_home}" if at_home else place(village, group)


def who(person: Person) -> str:
    """A person as the alert names them: name and role, else the number."""
    name = person.name or ROLE_ZH.get(person.role, "村民")
    return f"{ROLE_ZH.get(person.role, '')}{name}（{person.phone}）" if person.name else f"{name}（{person.phone}）"


def alert_text_for(alert: Alert) -> str:
    """The alert a recipient reads (SMS, webhook, console); a drill's says 【演练】 first."""
    text = _alert_text(alert)
    return DRILL_HEAD + text if alert.drill else text


def _alert_text(alert: Alert) -> str:
    where = place(alert.village, alert.group)
    if alert.reason == "caller_update":
        if alert.covered:
            return (
                "【6995】您的求助已有社区民警和联防组长（或警务助理）接警，正在赶来，请保持电话畅通。回复0可取消报警。"
            )
        helper = alert.accepted_by
        who_ = f"{helper.name or ''}（{ROLE_ZH.get(helper.role, helper.role)}）" if helper else "联防队员"
        return f"【6995】{who_}已接警，正在赶来，请保持电话畅通、注意安全。回复0可取消报警。"
    if alert.reason == "cancelled":
        return f"【6995】{where} {who(alert.caller)} 的报警已取消，无需前往。感谢您的响应。"
    if not alert.registered:
        head = f"【6995报警】未登记号码 {alert.caller.phone} 拨打6995求助，请值班室立即回拨核实并处置。"
    else:
        at_home = home(alert.caller)
        there = f"地点：{where} {at_home}。" if at_home else ""
        head = f"【6995联防报警】{where} {who(alert.caller)} 拨打6995求助，{there}请立即前往！"
    if alert.drill:
        by = f"（{alert.opened_by_name}发起）" if alert.opened_by_name else ""
        head = f"【6995联防演练{by}】{where} 联防演练，请按真实报警接警并前往本组集合点。"
    elif alert.origin:
        by = f"（{alert.opened_by_name}登记）" if alert.opened_by_name else ""
        caller = who(alert.caller) if alert.caller.phone else (alert.caller.name or "报警人")
        head = f"【6995联防报警·{ORIGIN_ZH.get(alert.origin, alert.origin)}{by}】{where} {caller} 求助，请立即前往！"
    if alert.silent:
        head = f"{SILENT_HEAD}{head.replace('【6995联防报警】', '').replace('【6995报警】', '')}"
    if alert.reason == "repeat":
        head = f"【再次呼叫·紧急程度{alert.urgency}】" + head
    elif alert.reason == "escalation":
        level = "一级" if alert.tier == 1 else "二级·请县局指挥中心调度"
        head = f"【警情升级·{level}】{ESCALATION_ZH.get(alert.why, alert.why)}。" + head
    elif alert.reason == "neighbours":
        head = f"【邻组支援】{where}{NEIGHBOURS_ZH.get(alert.why, alert.why)}，请邻组组长、助理就近支援。" + head
    return head + HOW_TO_ANSWER


def spoken_text_for(alert: Alert) -> str:
    """What the voice gateway says (TTS): no brackets, digits read one by one, the keypad last; a
    drill's says 演练 first."""
    text = _spoken_text(alert)
    return DRILL_SPOKEN + text.replace(DRILL_HEAD, "") if alert.drill else text


def _spoken_text(alert: Alert) -> str:
    if alert.drill and alert.reason not in ("caller_update", "cancelled"):
        urgent = f"警情升级，{ESCALATION_ZH.get(alert.why, alert.why)}。" if alert.reason == "escalation" else ""
        return (
            f"这里是6995联防报警。{urgent}{place(alert.village, alert.group)}联防演练，"
            "请按真实报警接警并前往本组集合点。"
            "接警请按1，无法前往请按2，已到达现场请按3，重听请按9。"
        )
    if alert.reason in ("caller_update", "cancelled"):
        return alert_text_for(alert).replace("【6995】", "这里是6995联防报警平台。").replace("回复0", "按0")
    caller = alert.caller
    who_ = f"{ROLE_ZH.get(caller.role, '')}{caller.name}" if caller.name else "未登记号码"
    number = " ".join(caller.phone.removeprefix("+86"))
    urgent = f"再次呼叫，紧急程度{alert.urgency}。" if alert.reason == "repeat" else ""
    if alert.reason == "escalation":
        urgent = f"警情升级，{ESCALATION_ZH.get(alert.why, alert.why)}。"
    if alert.reason == "neighbours":
        urgent = f"邻组支援，{NEIGHBOURS_ZH.get(alert.why, alert.why)}，请就近支援。"
    at_home = home(caller)
    there = f"地点：{place(alert.village, alert.group)}{at_home}。" if at_home else ""
    if alert.silent:
        urgent = SILENT_SPOKEN + urgent
    if alert.origin:
        urgent = f"{ORIGIN_ZH.get(alert.origin, alert.origin)}。" + urgent
        who_ = caller.name or "报警人"
    return (
        f"这里是6995联防报警。{urgent}{place(alert.village, alert.group)}{who_}，电话{number}，拨打6995求助，"
        f"{there}请立即前往。接警请按1，无法前往请按2，已到达现场请按3，重听请按9。"
    )


def markdown_for(alert: Alert, console_url: str) -> str:
    """A group robot's message (WeCom / DingTalk markdown): the summary and a link to the console."""
    title = {
        "raised": "6995联防报警",
        "repeat": f"6995再次呼叫·紧急程度{alert.urgency}",
        "escalation": f"警情升级·{'一级' if alert.tier == 1 else '二级'}",
        "neighbours": "邻组支援",
        "caller_update": "6995报警进展",
        "cancelled": "6995报警已取消",
    }[alert.reason]
    if alert.drill:
        title = f"演练·{title}"
    elif alert.origin:
        title = f"{title}·{ORIGIN_ZH.get(alert.origin, alert.origin)}"
    if alert.silent:
        title = "6995静默报警·勿回拨报警人" if alert.reason == "raised" else f"静默报警·{title}"
    alerted = "、".join(f"{p.name or p.phone}（{ROLE_ZH.get(p.role, p.role)}）" for p in alert.recipients)
    geo = geo_uri(alert.caller)
    coords = f"坐标：[{geo.removeprefix('geo:')}]({geo})\n\n" if geo else ""
    return (
        f"### 【{title}】{where_of(alert.village, alert.group, alert.caller)}\n"
        f"> {alert_text_for(alert)}\n\n"
        f"{coords}"
        f"已通知：{alerted}\n\n"
        f"[打开指挥台处置]({console_url})"
    )


def alert_text_en_for(alert: Alert) -> str:
    """The alert in English (for the console's English view and webhooks); a drill's says so first."""
    text = _alert_text_en(alert)
    return DRILL_EN + text if alert.drill else text


def _alert_text_en(alert: Alert) -> str:
    where = f"{alert.village}/{alert.group}" if alert.group else (alert.village or "unknown place")
    caller = alert.caller
    if caller.place is not None and caller.place.address:
        where += f" ({caller.place.address})"
    if alert.silent:
        return (
            f"SILENT duress alarm, do not call or text the caller: {ROLE_EN.get(caller.role, '')} {caller.name} "
            f"({caller.phone}) at {where} needs help."
        )
    return f"6995 alarm: {ROLE_EN.get(caller.role, '')} {caller.name} ({caller.phone}) at {where} needs help."


@dataclass(frozen=True, slots=True)
class Reach:
    """Who an alerting decision actually reached: `handed` people handed to a channel in its round,
    `unrouted` people no channel reaches (why: the reason recorded), out of `expected` alerted;
    `simulated` of the handed were handed to simulated phones only (no real phone rang for them)."""

    expected: int
    handed: int = 0
    unrouted: int = 0
    why: str = ""
    simulated: int = 0


SIMULATED_ZH = "模拟"
SIMULATED_PHONES_ZH = (
    "模拟电话：本服务以 --simulate-phones 启动，电话和短信只送到本进程内网关模拟器的虚拟电话"
    "（显示在运行服务的终端中），不会拨打任何真实电话；正式使用请配置电话网关或其他通知渠道。"
)


def simulated_text(reach: Reach) -> str:
    """The label of a count some of whose people only simulated phones reached ("" when none)."""
    if not reach.simulated:
        return ""
    if reach.simulated >= reach.handed:
        return "（模拟电话，无真实电话响铃）"
    return f"（其中{reach.simulated}人为模拟电话，未真实响铃）"


def channel_label(event: m.RespondersNotified | m.DeliverySucceeded | m.DeliveryFailed) -> str:
    """A delivery event's channel as the timeline names it: `voice`, or `voice（模拟）` for simulated phones."""
    return f"{event.channel}（{SIMULATED_ZH}）" if event.simulated else event.channel


def reach_text(reach: Reach) -> str:
    """`通知N人` counting only people handed to a channel; says why when some or all were not, and
    which were only simulated phones."""
    why = WITHDRAWN_ZH.get(reach.why, reach.why)
    if reach.handed and reach.unrouted:
        return f"通知{reach.handed}人{simulated_text(reach)}，{reach.unrouted}人{why}"
    if reach.handed:
        return f"通知{reach.handed}人{simulated_text(reach)}"
    if reach.unrouted:
        return f"通知0人：{why}"
    if reach.expected:
        return f"正在通知{reach.expected}人"
    return "通知0人：无人可通知"


CHANNEL_ZH: dict[str, str] = {
    "keypad": "按键",
    "sms": "短信",
    "console": "指挥台",
    "api": "接口",
    "cli": "命令行",
    "system": "系统",
}
ROLE_SHORT_ZH: dict[str, str] = {
    "household": "联防户",
    "leader": "组长",
    "assistant": "助理",
    "officer": "民警",
    "duty": "值班室",
}
LEGACY_ACTOR_ZH = "未知（旧记录）"


def actor_text(actor: m.Actor | None) -> str:
    """Who recorded an act, as the timeline names them: the token's name (or number) and the channel."""
    if actor is None:
        return LEGACY_ACTOR_ZH
    who_ = actor.name or actor.phone or "未知"
    return f"{who_}（{CHANNEL_ZH.get(actor.channel, actor.channel)}）"


def clause_zh(clause: tuple[str, ...]) -> str:
    """A cover clause as people say it: `组长/助理`."""
    return "/".join(ROLE_SHORT_ZH.get(r, r) for r in clause)


def cover_text(event: m.IncidentCovered, opened: m.IncidentOpened | None, relaxed: tuple[tuple[Role, ...], ...]) -> str:
    """What a cover means, said truthfully: which halves were met, and why a clause was not needed."""
    quorum = opened.quorum if opened is not None else ()
    proxy = "（含代为登记的应答）" if event.by_proxy else ""
    if not relaxed:
        if not quorum or quorum == (("officer",), ("leader", "assistant")):
            return f"已覆盖：民警与组长/助理均已接警{proxy}"
        return f"已覆盖：{'与'.join(clause_zh(c) for c in quorum)}均已接警{proxy}"
    met = "与".join(clause_zh(c) for c in quorum) or "一人"
    caller_role = opened.caller.role if opened is not None else None
    reasons = []
    for clause in relaxed:
        if caller_role in clause:
            reasons.append(f"{ROLE_SHORT_ZH.get(caller_role, caller_role)}为报警人")
        else:
            reasons.append(f"本组无{clause_zh(clause)}")
    return f"已覆盖（放宽规则）：{'，'.join(reasons)}，{met}接警即覆盖{proxy}"


def describe(
    event: object, people: dict[str, Person], reach: Reach | None = None, opened: m.IncidentOpened | None = None
) -> str:
    """One timeline line in Chinese for any incident event; `reach` says who an alerting decision
    (raise, escalation) actually reached, else the line says how many it alerts; `opened` (the
    incident's opening event) says what a cover means."""

    def name(phone: str) -> str:
        p = people.get(phone)
        if p is None:
            return phone
        return f"{p.name or phone}（{ROLE_ZH.get(p.role, p.role)}）"

    def by(actor: m.Actor | None, proxy: bool) -> str:
        if not proxy or actor is None:
            return ""
        return f"（由{actor.name or actor.phone or '未知'}代为登记）"

    if isinstance(event, m.UnregisteredCall):
        head = f"未登记号码 {event.caller.phone} 拨打{event.callee}报警"
        if not event.recipients:
            return f"{head}，未配置值班室，通知0人"
        return f"{head}，转派出所值班室，{reach_text(reach or Reach(len(event.recipients)))}"
    if isinstance(event, m.AlarmRaised) and event.origin == "drill":
        said = reach_text(reach or Reach(len(event.recipients)))
        opener = event.opened_by_name or event.opened_by or "定时演练"
        return f"【演练】{opener} 发起{place(event.village, event.group)}联防演练，{said}"
    if isinstance(event, m.AlarmRaised) and event.origin:
        said = reach_text(reach or Reach(len(event.recipients)))
        caller = who(event.caller) if event.caller.phone else (event.caller.name or "报警人（未留电话）")
        opener = event.opened_by_name or event.opened_by
        return f"{opener} 登记{ORIGIN_ZH.get(event.origin, event.origin)}：{caller}，{said}"
    if isinstance(event, m.AlarmRaised) and event.silent:
        said = reach_text(reach or Reach(len(event.recipients)))
        return f"{who(event.caller)} 静默报警（{event.callee}），仅通知民警、助理与值班室，{said}"
    if isinstance(event, m.AlarmRaised):
        return f"{who(event.caller)} 拨打{event.callee}报警，{reach_text(reach or Reach(len(event.recipients)))}"
    if isinstance(event, m.CallRepeated):
        return f"{who(event.caller)} 再次呼叫，紧急程度{event.urgency}"
    if isinstance(event, m.RespondersNotified):
        return f"已通知 {len(event.phones)} 人 · {channel_label(event)}"
    if isinstance(event, m.DeliverySucceeded):
        return f"已送达 {len(event.targets)} 人 · {channel_label(event)}"
    if isinstance(event, m.DeliveryFailed) and event.channel == NO_CHANNEL:
        whys = "、".join(dict.fromkeys(WITHDRAWN_ZH.get(f.reason, f.reason) for f in event.failures))
        return f"未通知 {len(event.failures)} 人：{whys}"
    if isinstance(event, m.DeliveryFailed):
        parts = [
            f"{name(f.phone)}{FAILURE_ZH[f.kind]}（{WITHDRAWN_ZH.get(f.reason, f.reason)}）" for f in event.failures
        ]
        return f"{channel_label(event)}：" + "；".join(parts)
    if isinstance(event, m.ResponderAccepted):
        came = f"（邻组{event.neighbour_group}组）" if event.neighbour_group else ""
        return f"{name(event.phone)}{came} 已接警{by(event.actor, event.proxy)}"
    if isinstance(event, m.ResponderDeclined):
        return f"{name(event.phone)} 无法前往{by(event.actor, event.proxy)}"
    if isinstance(event, m.ResponderArrived):
        return f"{name(event.phone)} 已到达现场{by(event.actor, event.proxy)}"
    if isinstance(event, m.IncidentCovered):
        relaxed = event.relaxed if event.kind is not None else relaxed_of(opened)
        return cover_text(event, opened, relaxed)
    if isinstance(event, m.IncidentEscalated):
        said = reach_text(reach or Reach(len(event.alerted)))
        return f"升级至第{event.tier}级：{ESCALATION_ZH.get(event.reason, event.reason)}，{said}"
    if isinstance(event, m.NeighboursAlerted):
        said = reach_text(reach or Reach(len(event.alerted)))
        groups = "、".join(f"{g}组" for g in sorted(event.groups, key=group_order))
        return f"邻组支援：{NEIGHBOURS_ZH.get(event.reason, event.reason)}，通知{groups}组长/助理，{said}"
    if isinstance(event, m.IncidentResolved):
        category = CATEGORY_ZH.get(event.category, event.category)
        return f"{name(event.by)} 处置完毕（{category}）{by(event.actor, event.proxy)}"
    if isinstance(event, m.IncidentCancelled):
        reason = CANCEL_ZH.get(event.reason, "其他")
        return f"{name(event.by)} 取消报警（{reason}）{by(event.actor, event.proxy)}"
    return type(event).__name__


DEFAULT_COVER: tuple[tuple[Role, ...], ...] = (("officer",), ("leader", "assistant"))


def relaxed_of(opened: m.IncidentOpened | None) -> tuple[tuple[Role, ...], ...]:
    """The clauses dropped from an incident's cover policy; for one stored before they were kept,
    the default policy's clauses its quorum lacks (a duty-desk rule is not a relaxed one)."""
    if opened is None:
        return ()
    if opened.relaxed is not None:
        return opened.relaxed
    if not isinstance(opened, m.AlarmRaised) or opened.quorum == (("duty",),):
        return ()
    return tuple(c for c in DEFAULT_COVER if c not in opened.quorum)
