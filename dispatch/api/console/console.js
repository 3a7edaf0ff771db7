/*
 * The officer console: a live board of open incidents, an incident page with its timeline, and a
 * village page with 30-day response-time charts. Plain JavaScript, no build step, nothing fetched
 * from outside the service.
 *
 * Invariants:
 * - every datum comes from the service's API with the signed-in token; the page never decides what
 *   a token may see (the server filters) and shows the server's answer to every action;
 * - data is put into the page as text nodes, never parsed as HTML;
 * - every value from the server (numbers, names, villages, groups, notes, categories, reasons) is
 *   shown bidi-isolated: in its own <bdi> (`val`, `phoneEl`) or, where only text can go (an option,
 *   a message), between FSI and PDI (`iso`), so a bidi control inside one value cannot reorder the
 *   text around it; a phone number is shown left to right without bidi controls (`phoneText`);
 * - the board is kept current by the event stream: an event for an incident refetches that
 *   incident (folded from the log), so the card always shows one consistent state; a reconnect or
 *   a `resync` reloads the whole board;
 * - re-rendering an incident never replaces its action controls, so a half-typed note survives
 *   updates.
 */
"use strict";

const BASE = new URL("../", location.href);
const CLOSED = new Set(["resolved", "cancelled"]);
const CATEGORIES = ["criminal", "public_order", "dispute", "help", "traffic", "fire", "other"];
const CANCEL_REASONS = ["caller_safe", "misdial", "duplicate", "drill", "other"];
const ALARM_TYPES = new Set(["AlarmRaised", "UnregisteredCall", "CallRepeated"]);
const DAY_MS = 86400000;

const TEXT = {
  zh: {
    colon: "：",
    list_sep: "、",
    skip: "跳到主要内容",
    app_title: "联防接警台",
    nav_board: "接警看板",
    nav_villages: "村情统计",
    signout: "退出",
    signin_title: "登录",
    signin_hint: "请输入所里发放的访问令牌（以 dsp_ 开头）。",
    token: "访问令牌",
    remember: "在此设备上保持登录",
    signin: "登录",
    signin_failed: "令牌无效或已被吊销。",
    no_read: "此令牌（{role}）不能查看警情，请使用民警、值班室或管理员令牌。",
    err_401: "登录已失效，请重新登录。",
    live_on: "● 实时",
    live_off: "○ 连接中断，正在重连…",
    live_wait: "○ 连接中…",
    role_officer: "社区民警",
    role_duty_desk: "值班室",
    role_admin: "管理员",
    role_gateway: "网关",
    role_metrics: "监控",
    all_villages: "全部村",
    village_filter: "村",
    my_number: "我的号码",
    my_number_hint: "来自登录令牌；为他人应答记为代为登记",
    my_number_none: "此令牌未登记号码，所有应答记为代为登记",
    proxy_by: "由{name}代为登记",
    recorded_proxy: "已代为记录：{who} {what}",
    sound: "声音提醒",
    sound_on: "开",
    sound_off: "关",
    sound_test: "试听",
    sound_blocked: "浏览器尚未允许播放声音：点击页面任意处即可启用。",
    setup_no_channel: "未配置通知渠道：报警只记录并在本页显示，不会拨打电话、发短信或通知任何人。",
    setup_simulated: "模拟电话：电话和短信只送到网关模拟器的虚拟电话（{channels}，显示在运行服务的终端中），不会拨打任何真实电话。正式使用请配置电话网关等通知渠道。",
    setup_no_duty_desk: "未配置值班室（DISPATCH_DUTY_DESK）：未登记号码的报警无人接报，只在本页显示。",
    open_count: "未结警情 {n}",
    uncovered_count: "未覆盖 {n}",
    overdue_count: "超时 {n}",
    empty_board: "暂无未结警情。新报警会立即显示在这里。",
    loading: "加载中…",
    new_alarm: "新警情",
    repeat_alarm: "再次呼叫",
    dismiss: "知道了",
    view: "查看",
    caller: "报警人",
    location: "地点",
    map: "地图",
    unregistered: "未登记号码",
    silent: "静默报警·勿回拨报警人",
    origin_walk_in: "群众来所报警",
    origin_transfer_110: "110转警",
    origin_drill: "联防演练",
    drill: "演练",
    opened_by: "登记人",
    report_open: "登记警情（来所报警 / 110转警）",
    report_village: "村",
    report_group: "组",
    report_origin: "来源",
    report_caller: "报警人电话（可空）",
    report_name: "报警人姓名（可空）",
    report_submit: "登记并通知该组",
    report_done: "已登记，已通知该组",
    absence_open: "休假与替班",
    absence_number: "休假人电话",
    absence_from: "开始（可空：现在）",
    absence_until: "结束",
    absence_substitute: "替班人电话（可空：无人替班）",
    absence_substitute_name: "替班人姓名（可空）",
    absence_note: "说明（年假、培训…）",
    absence_submit: "登记休假",
    absence_done: "已登记；休假期间由替班人接警",
    absence_end: "结束休假",
    absence_ended: "已结束休假；恢复接警",
    absence_none: "目前无人休假",
    absence_now: "休假中",
    absence_planned: "已安排",
    absence_until_text: "至",
    absence_by: "替班",
    absence_nobody: "无人替班",
    short_groups: "人手不足的小组",
    short_missing: "缺少{roles}（休假无人替班）",
    stands_in: "替班·代{who}",
    bc_open: "广播预警",
    bc_running: "（{n} 条发送中）",
    bc_none: "暂无广播预警",
    bc_start: "发布广播预警（全村每户：语音＋短信，按1确认收到）",
    bc_villages: "村（多个用逗号分隔）",
    bc_kind: "类别",
    bc_message: "预警内容（300字以内）",
    bc_submit: "发布并开始发送",
    bc_done: "已发布，正在发送",
    kind_typhoon: "台风预警",
    kind_flood: "洪水预警",
    kind_missing_child: "寻找走失儿童",
    kind_other: "紧急通知",
    bc_total: "应通知",
    bc_handed: "已交渠道",
    bc_reached: "已送达",
    bc_reached_hint: "至少一个渠道已交给网关",
    bc_heard: "已收听",
    bc_heard_hint: "按1或回复1确认收到",
    bc_failed: "未能送达",
    bc_pending: "发送中",
    bc_finished: "发送完毕",
    bc_by: "发布人",
    bc_show: "逐人情况",
    bc_hide: "收起",
    bc_people: "逐人送达与回执",
    bc_people_more: "共 {total} 人，显示前 {n} 人（完整名单：broadcast report 或 CSV）",
    bc_csv: "下载完整名单（CSV，{total} 人）",
    bc_csv_saved: "已下载完整名单：{total} 人",
    bc_phone: "电话",
    bc_name: "姓名",
    bc_role: "角色",
    bc_not_heard: "未确认",
    ch_voice: "语音",
    ch_sms: "短信",
    via_keypad: "按键1",
    via_sms: "短信回复1",
    via_console: "接警台登记",
    via_api: "接口登记",
    st_away: "休假·未呼叫",
    neighbour_of: "邻组{g}组",
    raised_at: "报警时间",
    ago: "{d}前",
    covered: "已覆盖",
    not_covered: "未覆盖",
    urgency: "紧急程度 {n}",
    tier: "已升级第{n}级",
    ack_deadline: "覆盖时限",
    arrival_deadline: "到场时限",
    left: "剩余 {t}",
    overdue: "已超时 {t}",
    done_in: "用时 {t}",
    after_cover: "覆盖后开始计时",
    accepted_by: "已接警",
    nobody_yet: "暂无",
    members: "小组成员",
    st_pending: "未通知",
    st_notified: "已通知",
    st_simulated: "（模拟）",
    st_delivered: "已送达",
    st_failed: "送达失败",
    st_accepted: "已接警",
    st_declined: "无法前往",
    st_arrived: "已到场",
    ch_notified: "通知",
    ch_delivered: "送达",
    ch_answer: "应答",
    answer_as: "应答人",
    choose: "— 选择应答人 —",
    me: "我",
    did_accept: "接警",
    did_arrived: "到场",
    did_decline: "表示无法前往",
    did_resolve: "处置完毕",
    did_cancel: "取消报警",
    act_accept: "接警",
    act_decline: "无法前往",
    act_arrived: "已到场",
    act_resolve: "处置完毕",
    act_cancel: "取消报警",
    category: "警情类别",
    note: "备注",
    reason: "取消原因",
    confirm_resolve: "确认处置",
    confirm_cancel: "确认取消",
    close_form: "收起",
    need_responder: "请先选择应答人。",
    need_category: "请选择警情类别。",
    recorded: "已记录：{who} {what}",
    nothing_changed: "无变化：{who} 已{what}",
    now_covered: "警情已覆盖",
    closed_now: "警情已关闭",
    err_403: "不能应答：{msg}",
    err_404: "找不到该警情，或不在您的辖区。",
    err_409: "当前状态不允许：{msg}",
    err_422: "输入有误：{msg}",
    err_other: "操作失败（{code}）：{msg}",
    err_net: "网络错误，请重试。",
    details: "详情与时间线",
    back: "← 返回看板",
    timeline: "时间线",
    incident: "警情",
    status: "状态",
    place: "地点",
    cat_criminal: "刑事",
    cat_public_order: "治安",
    cat_dispute: "纠纷",
    cat_help: "求助",
    cat_traffic: "交通",
    cat_fire: "火灾",
    cat_other: "其他",
    cat_none: "未分类",
    reason_caller_safe: "报警人已安全",
    reason_misdial: "误拨",
    reason_duplicate: "重复报警",
    reason_drill: "演练",
    reason_other: "其他",
    resolution: "处置结果",
    village_title: "{v} · 近30天",
    village_pick: "选择村",
    no_villages: "没有可查看的村。",
    total: "报警",
    covered_rate: "覆盖率",
    p50_accept: "接警中位",
    p50_cover: "覆盖中位",
    p50_arrive: "到场中位",
    chart_accept: "报警到首次接警",
    chart_cover: "报警到覆盖",
    chart_arrive: "报警到首人到场",
    chart_note: "每日中位数；柱上悬停可看当日起数与最长用时。",
    chart_none: "近30天无数据",
    chart_label: "{name}，近30天{n}起，中位{p}",
    bar_title: "{day}：中位 {p}，最长 {max}（{n}起）",
    categories: "警情类别（近30天）",
    table: "数据表",
    day: "日期",
    count: "起数",
    median: "中位",
    longest: "最长",
    truncated: "只统计了最近 {n} 起。",
    d_s: "{s}秒",
    d_ms: "{m}分{s}秒",
    d_hm: "{h}小时{m}分",
  },
  en: {
    colon: ": ",
    list_sep: ", ",
    skip: "Skip to main content",
    app_title: "Joint-defence dispatch",
    nav_board: "Board",
    nav_villages: "Villages",
    signout: "Sign out",
    signin_title: "Sign in",
    signin_hint: "Enter the access token issued by your station (starts with dsp_).",
    token: "Access token",
    remember: "Keep me signed in on this device",
    signin: "Sign in",
    signin_failed: "The token is invalid or has been revoked.",
    no_read: "This token ({role}) cannot read incidents: use an officer, duty desk or admin token.",
    err_401: "Your session has ended: please sign in again.",
    live_on: "● Live",
    live_off: "○ Disconnected, reconnecting…",
    live_wait: "○ Connecting…",
    role_officer: "community officer",
    role_duty_desk: "duty desk",
    role_admin: "admin",
    role_gateway: "gateway",
    role_metrics: "metrics",
    all_villages: "All villages",
    village_filter: "Village",
    my_number: "My number",
    my_number_hint: "From your token; an answer for someone else is recorded as taken on their behalf",
    my_number_none: "This token has no number: every answer is recorded as taken on someone's behalf",
    proxy_by: "recorded by {name} on their behalf",
    recorded_proxy: "Recorded on their behalf: {who} {what}",
    sound: "Sound",
    sound_on: "on",
    sound_off: "off",
    sound_test: "Test",
    sound_blocked: "The browser has not allowed sound yet: click anywhere on the page to enable it.",
    setup_no_channel: "No delivery channel: alarms are recorded and shown here, but nobody is called, texted or notified.",
    setup_simulated: "Simulated phones (模拟): calls and texts go only to the gateway simulator's virtual phones ({channels}, printed in the service's terminal); no real phone rings. Configure a telephony gateway or another channel for real use.",
    setup_no_duty_desk: "No duty desk (DISPATCH_DUTY_DESK): an alarm from an unknown number rings nobody and is only shown here.",
    open_count: "{n} open",
    uncovered_count: "{n} not covered",
    overdue_count: "{n} overdue",
    empty_board: "No open incidents. A new alarm shows up here at once.",
    loading: "Loading…",
    new_alarm: "New alarm",
    repeat_alarm: "Called again",
    dismiss: "Dismiss",
    view: "View",
    caller: "Caller",
    location: "Where",
    map: "map",
    unregistered: "Unregistered number",
    silent: "Silent alarm: do not call the caller back",
    origin_walk_in: "Walk-in report",
    origin_transfer_110: "110 transfer",
    origin_drill: "Drill",
    drill: "DRILL",
    opened_by: "opened by",
    report_open: "Open an incident (walk-in / 110 transfer)",
    report_village: "Village",
    report_group: "Group",
    report_origin: "Origin",
    report_caller: "Caller's phone (optional)",
    report_name: "Caller's name (optional)",
    report_submit: "Open and alert the group",
    report_done: "Opened; the group is alerted",
    absence_open: "Absences and substitutes",
    absence_number: "Member's phone",
    absence_from: "From (optional: now)",
    absence_until: "Until",
    absence_substitute: "Substitute's phone (optional: nobody)",
    absence_substitute_name: "Substitute's name (optional)",
    absence_note: "Note (leave, training...)",
    absence_submit: "Mark absent",
    absence_done: "Recorded; the substitute is rung meanwhile",
    absence_end: "End absence",
    absence_ended: "Absence ended; rung again",
    absence_none: "Nobody is away",
    absence_now: "away",
    absence_planned: "planned",
    absence_until_text: "until",
    absence_by: "substitute",
    absence_nobody: "no substitute",
    short_groups: "Groups left short",
    short_missing: "missing {roles} (away, no substitute)",
    stands_in: "substitute for {who}",
    bc_open: "Broadcast warnings",
    bc_running: " ({n} sending)",
    bc_none: "No broadcast warnings",
    bc_start: "Warn whole villages (every member: voice + SMS, press 1 when heard)",
    bc_villages: "Villages (comma separated)",
    bc_kind: "Kind",
    bc_message: "Warning (up to 300 characters)",
    bc_submit: "Send the warning",
    bc_done: "Started; sending",
    kind_typhoon: "Typhoon",
    kind_flood: "Flood",
    kind_missing_child: "Missing child",
    kind_other: "Emergency notice",
    bc_total: "to warn",
    bc_handed: "handed to channel",
    bc_reached: "delivered",
    bc_reached_hint: "handed to the gateway on at least one channel",
    bc_heard: "heard",
    bc_heard_hint: "pressed or replied 1",
    bc_failed: "failed",
    bc_pending: "sending",
    bc_finished: "all sent",
    bc_by: "by",
    bc_show: "Per person",
    bc_hide: "Hide",
    bc_people: "Per person: delivery and receipt",
    bc_people_more: "{total} people, the first {n} shown (everyone: broadcast report or CSV)",
    bc_csv: "Download everyone (CSV, {total} people)",
    bc_csv_saved: "Downloaded everyone: {total} people",
    bc_phone: "Phone",
    bc_name: "Name",
    bc_role: "Role",
    bc_not_heard: "not yet",
    ch_voice: "voice",
    ch_sms: "SMS",
    via_keypad: "keypad 1",
    via_sms: "SMS reply 1",
    via_console: "console",
    via_api: "API",
    st_away: "away, not rung",
    neighbour_of: "neighbouring group {g}",
    raised_at: "Raised",
    ago: "{d} ago",
    covered: "Covered",
    not_covered: "Not covered",
    urgency: "Urgency {n}",
    tier: "Escalated, tier {n}",
    ack_deadline: "Cover by",
    arrival_deadline: "Arrive by",
    left: "{t} left",
    overdue: "{t} overdue",
    done_in: "took {t}",
    after_cover: "starts once covered",
    accepted_by: "Accepted",
    nobody_yet: "nobody yet",
    members: "Group members",
    st_pending: "not notified",
    st_notified: "notified",
    st_simulated: " (simulated)",
    st_delivered: "delivered",
    st_failed: "delivery failed",
    st_accepted: "accepted",
    st_declined: "declined",
    st_arrived: "on scene",
    ch_notified: "notified",
    ch_delivered: "delivered",
    ch_answer: "answer",
    answer_as: "Answer as",
    choose: "— choose who answers —",
    me: "me",
    did_accept: "accepted",
    did_arrived: "arrived",
    did_decline: "declined",
    did_resolve: "resolved",
    did_cancel: "cancelled",
    act_accept: "Accept",
    act_decline: "Decline",
    act_arrived: "Arrived",
    act_resolve: "Resolve",
    act_cancel: "Cancel alarm",
    category: "Category",
    note: "Note",
    reason: "Reason",
    confirm_resolve: "Confirm resolve",
    confirm_cancel: "Confirm cancel",
    close_form: "Close",
    need_responder: "Choose who answers first.",
    need_category: "Choose a category.",
    recorded: "Recorded: {who} {what}",
    nothing_changed: "No change: {who} already {what}",
    now_covered: "the incident is covered",
    closed_now: "the incident is closed",
    err_403: "Cannot answer: {msg}",
    err_404: "No such incident, or not in your villages.",
    err_409: "Not allowed now: {msg}",
    err_422: "Invalid input: {msg}",
    err_other: "Failed ({code}): {msg}",
    err_net: "Network error, please retry.",
    details: "Details and timeline",
    back: "← Back to the board",
    timeline: "Timeline",
    incident: "Incident",
    status: "Status",
    place: "Place",
    cat_criminal: "criminal",
    cat_public_order: "public order",
    cat_dispute: "dispute",
    cat_help: "help",
    cat_traffic: "traffic",
    cat_fire: "fire",
    cat_other: "other",
    cat_none: "uncategorised",
    reason_caller_safe: "caller is safe",
    reason_misdial: "misdial",
    reason_duplicate: "duplicate",
    reason_drill: "drill",
    reason_other: "other",
    resolution: "Outcome",
    village_title: "{v} · last 30 days",
    village_pick: "Village",
    no_villages: "No village to show.",
    total: "Alarms",
    covered_rate: "Covered",
    p50_accept: "Median to accept",
    p50_cover: "Median to cover",
    p50_arrive: "Median to arrive",
    chart_accept: "Alarm to first accept",
    chart_cover: "Alarm to covered",
    chart_arrive: "Alarm to first arrival",
    chart_note: "Daily median; hover a bar for the day's count and longest time.",
    chart_none: "No data in the last 30 days",
    chart_label: "{name}, last 30 days, {n} incidents, median {p}",
    bar_title: "{day}: median {p}, longest {max} ({n} incidents)",
    categories: "Categories (last 30 days)",
    table: "Data table",
    day: "Day",
    count: "Count",
    median: "Median",
    longest: "Longest",
    truncated: "Only the latest {n} incidents are counted.",
    d_s: "{s}s",
    d_ms: "{m}m {s}s",
    d_hm: "{h}h {m}m",
  },
};

const ROLE_EN = {
  household: "household",
  leader: "group leader",
  assistant: "police assistant",
  officer: "community officer",
  duty: "station duty desk",
  command_centre: "command centre",
  unregistered: "unregistered number",
};
const STATUS_EN = {
  raised: "raised",
  notifying: "notifying",
  acknowledged: "acknowledged",
  on_scene: "on scene",
  resolved: "resolved",
  cancelled: "cancelled",
};

const S = {
  lang: localStorage.getItem("dispatch.lang") === "en" ? "en" : "zh",
  token: sessionStorage.getItem("dispatch.token") || localStorage.getItem("dispatch.token") || "",
  me: null,
  villages: [],
  filter: localStorage.getItem("dispatch.filter") || "",
  myPhone: "",
  sound: localStorage.getItem("dispatch.sound") !== "off",
  details: new Map(),
  cards: new Map(),
  page: null,
  view: null,
  stream: null,
  inflight: new Map(),
  unseen: 0,
  audio: null,
  bc: null,
  bcSelected: null,
};

function t(key, params) {
  const table = TEXT[S.lang];
  let text = key in table ? table[key] : TEXT.zh[key] || key;
  for (const [k, v] of Object.entries(params || {})) text = text.split(`{${k}}`).join(String(v));
  return text;
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const svgNS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const child of children.flat()) if (child) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

function val(value, cls) {
  return h("bdi", { class: cls || null, text: value === null || value === undefined ? "" : String(value) });
}

function iso(value) {
  return `\u2068${value === null || value === undefined ? "" : value}\u2069`;
}

function phoneText(phone) {
  return String(phone || "").replace(BIDI_CONTROLS, "");
}

function phoneEl(phone, attrs) {
  return h("bdi", { dir: "ltr", ...(attrs || {}), text: phoneText(phone) });
}

function joined(items, sep) {
  return items.flatMap((item, i) => (i ? [sep, item] : [item]));
}

function $(id) {
  return document.getElementById(id);
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function digits(phone) {
  return String(phone || "").replace(/\D/g, "");
}

function samePhone(a, b) {
  const x = digits(a);
  const y = digits(b);
  if (!x || !y) return false;
  if (x === y) return true;
  const strip = (d) => (d.startsWith("86") && d.length > 11 ? d.slice(2) : d).replace(/^0/, "");
  return strip(x) === strip(y);
}

function roleName(role, zh) {
  return S.lang === "en" ? ROLE_EN[role] || role : zh || role;
}

function personText(p) {
  const name = iso(p.name || phoneText(p.phone));
  return S.lang === "en" ? `${name} (${iso(roleName(p.role))})` : `${name}（${iso(roleName(p.role, p.role_zh))}）`;
}

function personLabel(p) {
  const name = p.name ? val(p.name, "name") : phoneEl(p.phone, { class: "name" });
  return S.lang === "en"
    ? [name, " (", val(roleName(p.role), "role"), ")"]
    : [name, "（", val(roleName(p.role, p.role_zh), "role"), "）"];
}

function statusName(d) {
  return S.lang === "en" ? STATUS_EN[d.status] || d.status : d.status_zh || d.status;
}

function placeName(d) {
  if (!d.village) return t("unregistered");
  if (!d.group) return val(d.village, "village");
  const village = val(d.village, "village");
  const group = val(d.group, "group");
  return S.lang === "en" ? [village, " group ", group] : [village, group, "组"];
}

function ms(iso) {
  return iso ? Date.parse(iso) : NaN;
}

function duration(seconds) {
  if (seconds < 9.95) return t("d_s", { s: Number(Math.max(0, seconds).toFixed(1)) });
  const total = Math.round(seconds);
  if (total < 60) return t("d_s", { s: total });
  if (total < 3600) return t("d_ms", { m: Math.floor(total / 60), s: String(total % 60).padStart(2, "0") });
  return t("d_hm", { h: Math.floor(total / 3600), m: String(Math.floor((total % 3600) / 60)).padStart(2, "0") });
}

function clock(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const m = Math.floor(total / 60);
  const sec = String(total % 60).padStart(2, "0");
  return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

// A time as people read it, in the incident's village zone, the shape of the server's human_time:
// "2026-12-04 14:03:05 +08:00" (ISO date, never 04/12), "14:03:05 +08:00" (zone) or "14:03:05" (time).
function timeOf(iso, zone, shape = "time") {
  if (!iso) return "";
  const p = zoneParts(iso, zone);
  const offset = p.timeZoneName === "GMT" ? "+00:00" : p.timeZoneName.replace("GMT", "");
  const time = `${p.hour}:${p.minute}:${p.second}`;
  if (shape === "full") return `${p.year}-${p.month}-${p.day} ${time} ${offset}`;
  return shape === "zone" ? `${time} ${offset}` : time;
}

// The calendar fields of a moment in a zone (an unknown zone: the browser's).
function zoneParts(when, zone) {
  const opts = {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
    hourCycle: "h23", timeZoneName: "longOffset",
  };
  let parts;
  try {
    parts = new Intl.DateTimeFormat("en-US", { ...opts, timeZone: zone || undefined }).formatToParts(new Date(when));
  } catch {
    parts = new Intl.DateTimeFormat("en-US", opts).formatToParts(new Date(when));
  }
  return Object.fromEntries(parts.map((x) => [x.type, x.value]));
}

// The day of a moment in the village's zone: 2026-12-04.
function dayKey(when, zone) {
  const p = zoneParts(when, zone);
  return `${p.year}-${p.month}-${p.day}`;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/* `blob`: a file (a CSV export): its body as a Blob; an error still comes as JSON. */
async function api(path, { method = "GET", body, headers = {}, blob = false } = {}) {
  let res;
  try {
    res = await fetch(new URL(path, BASE), {
      method,
      headers: {
        Authorization: `Bearer ${S.token}`,
        Accept: blob ? "*/*" : "application/json",
        "X-Dispatch-Client": "console",
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (exc) {
    throw new ApiError(0, t("err_net"));
  }
  if (blob && res.ok) return res.blob();
  let data = null;
  try {
    data = await res.json();
  } catch (exc) {
    data = null;
  }
  if (res.status === 401 && S.me) {
    signOut(t("err_401"));
  }
  if (!res.ok) throw new ApiError(res.status, (data && data.error) || res.statusText);
  return data;
}

/* A short message in the page's flow, never over it: under the controls it answers (`near`, scrolled
   into view), else at the top of the page (not scrolled to: the page stays where the user has it).
   A fixed toast at the bottom of a phone's screen hid the card's buttons for its whole life. When it
   fades, its space stays until the next message, so nothing moves under a finger. */
function toast(text, kind, near) {
  const el = toast.el || (toast.el = $("toast"));
  el.textContent = text;
  el.className = `toast show ${kind || ""}`;
  if (near && near.isConnected) {
    if (el.previousElementSibling !== near) near.after(el);
    el.scrollIntoView({ block: "nearest" });
    // the card may re-render (who accepted, for whom) after this: keep the message in sight
    requestAnimationFrame(() => el.isConnected && el.scrollIntoView({ block: "nearest" }));
  } else {
    const main = $("main");
    if (main && main.firstElementChild !== el) main.prepend(el);
  }
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    el.className = "toast spent";
  }, 6000);
}

/* ---------- sound ---------- */

function audioContext() {
  if (!S.audio) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    S.audio = new Ctx();
  }
  return S.audio;
}

function unlockAudio() {
  const ctx = audioContext();
  if (ctx && ctx.state === "suspended") ctx.resume().catch(() => {});
}

function siren() {
  const root = document.documentElement;
  if (!S.sound) {
    root.dataset.sound = "off";
    return;
  }
  const ctx = audioContext();
  if (!ctx) {
    root.dataset.sound = "unsupported";
    return;
  }
  if (ctx.state !== "running") {
    ctx.resume().catch(() => {});
    if (ctx.state !== "running") {
      root.dataset.sound = "blocked";
      toast(t("sound_blocked"), "warn");
    }
  }
  const start = ctx.currentTime + 0.02;
  const gain = ctx.createGain();
  gain.connect(ctx.destination);
  gain.gain.setValueAtTime(0.0001, start);
  const osc = ctx.createOscillator();
  osc.type = "square";
  for (let i = 0; i < 3; i += 1) {
    const at = start + i * 0.5;
    osc.frequency.setValueAtTime(880, at);
    osc.frequency.setValueAtTime(660, at + 0.25);
    gain.gain.setValueAtTime(0.18, at);
    gain.gain.setValueAtTime(0.0001, at + 0.45);
  }
  osc.connect(gain);
  osc.start(start);
  osc.stop(start + 1.5);
  if (ctx.state === "running") root.dataset.sound = "played";
  root.dataset.sirens = String(Number(root.dataset.sirens || 0) + 1);
}

/* ---------- sign-in ---------- */

function setMain(...children) {
  const main = $("main");
  fill(main, ...children);
}

function renderSignIn(message) {
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("live").textContent = "";
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "token-hint",
  });
  const remember = h("input", { id: "remember", type: "checkbox" });
  const error = h("p", { id: "signin-error", class: "error", role: "alert", text: message || "" });
  const form = h(
    "form",
    { class: "signin card", onsubmit: (e) => signIn(e, input.value.trim(), remember.checked, error) },
    h("h2", { text: t("signin_title") }),
    h("p", { id: "token-hint", class: "muted", text: t("signin_hint") }),
    h("label", { for: "token", text: t("token") }),
    input,
    h("label", { class: "check" }, remember, " ", t("remember")),
    h("button", { type: "submit", class: "primary", text: t("signin") }),
    error,
  );
  setMain(form);
  input.focus();
}

async function signIn(event, token, remember, errorEl) {
  event.preventDefault();
  unlockAudio();
  if (!token) return;
  S.token = token;
  try {
    await loadMe();
  } catch (exc) {
    S.token = "";
    errorEl.textContent = exc.status === 401 ? t("signin_failed") : exc.message;
    return;
  }
  (remember ? localStorage : sessionStorage).setItem("dispatch.token", token);
  if (!location.hash || location.hash === "#/") location.hash = "#/board";
  else route();
}

async function loadMe() {
  const me = await api("v1/me");
  if (!["officer", "duty_desk", "admin"].includes(me.role)) {
    throw new ApiError(403, t("no_read", { role: me.role }));
  }
  S.me = me;
  S.myPhone = me.phone || "";
  if (me.villages) {
    S.villages = me.villages;
  } else {
    S.villages = (await api("v1/villages")).villages;
  }
  if (S.filter && !S.villages.includes(S.filter)) S.filter = "";
  $("nav").hidden = false;
  $("signout").hidden = false;
  connectStream();
}

/* What the service cannot do as configured (from /readyz, which lists its checks to a token holder):
   shown above the board for as long as it lasts, in the page's flow. */
async function checkSetup() {
  clearTimeout(checkSetup.timer);
  if (!S.token) return;
  let checks = {};
  let simulation = null;
  try {
    const res = await fetch(new URL("readyz", BASE), { headers: { Authorization: `Bearer ${S.token}` }, cache: "no-store" });
    const body = await res.json();
    checks = body.checks || {};
    simulation = body.simulation || null;
  } catch (exc) {
    checks = {};
  }
  const problems = [];
  if (simulation) problems.push(["simulation", t("setup_simulated", { channels: simulation.channels.join(", ") })]);
  else if (checks.channels === false) problems.push(["channels", t("setup_no_channel")]);
  if (checks.duty_desk === false) problems.push(["duty_desk", t("setup_no_duty_desk")]);
  const el = $("setup");
  fill(el, ...problems.map(([key, text]) => h("p", { dataset: { check: key }, text })));
  el.hidden = problems.length === 0 || !S.me;
  checkSetup.timer = setTimeout(checkSetup, 60000);
}

function signOut(message) {
  clearTimeout(checkSetup.timer);
  $("setup").hidden = true;
  sessionStorage.removeItem("dispatch.token");
  localStorage.removeItem("dispatch.token");
  S.token = "";
  S.me = null;
  if (S.stream) S.stream.close();
  S.stream = null;
  S.details.clear();
  S.cards.clear();
  hideBanner();
  renderSignIn(message);
}

/* ---------- live stream ---------- */

function setLive(state) {
  const el = $("live");
  el.textContent = t(state === "on" ? "live_on" : state === "off" ? "live_off" : "live_wait");
  el.className = `live ${state}`;
  document.documentElement.dataset.live = state;
}

function connectStream() {
  if (S.stream) S.stream.close();
  setLive("wait");
  const url = new URL("v1/stream", BASE);
  url.searchParams.set("access_token", S.token);
  const stream = new EventSource(url);
  S.stream = stream;
  stream.addEventListener("hello", () => {
    setLive("on");
    checkSetup();
    reloadView();
    setTimeout(reloadView, 1500);
  });
  stream.addEventListener("incident", (msg) => onIncidentEvent(JSON.parse(msg.data)));
  stream.addEventListener("broadcast", (msg) => onBroadcastEvent(JSON.parse(msg.data)));
  stream.addEventListener("resync", () => reloadView());
  stream.addEventListener("bye", () => setLive("off"));
  stream.onerror = () => {
    setLive("off");
    if (stream.readyState === EventSource.CLOSED && S.stream === stream) {
      setTimeout(async () => {
        if (S.stream !== stream || !S.me) return;
        try {
          await api("v1/me");
          connectStream();
        } catch (exc) {
          if (exc.status !== 401) setTimeout(() => S.stream === stream && connectStream(), 3000);
        }
      }, 2000);
    }
  };
}

function onIncidentEvent(data) {
  const event = data.event || {};
  const id = event.incident_id;
  if (!id) return;
  const alarm = ALARM_TYPES.has(event.type);
  const known = S.details.has(id);
  const shown = S.view && ((S.view.name === "board" && (known || alarm)) || (S.view.name === "incident" && S.view.id === id));
  if (!shown && !alarm) return;
  refresh(id).then((d) => {
    if (d && alarm && !CLOSED.has(d.status) && inFilter(d)) raiseAlert(d, event.type === "CallRepeated");
  });
}

function reloadView() {
  if (S.view && S.view.name === "board") {
    loadBoard();
    reloadBroadcasts();
  }
  else if (S.view && S.view.name === "incident") refresh(S.view.id);
}

async function refresh(id) {
  const running = S.inflight.get(id);
  if (running) {
    running.again = true;
    return running.promise;
  }
  const slot = { again: false, promise: null };
  slot.promise = (async () => {
    let d = null;
    do {
      slot.again = false;
      try {
        d = await api(`v1/incidents/${encodeURIComponent(id)}`);
      } catch (exc) {
        if (exc.status === 404) dropCard(id);
        d = null;
        break;
      }
      show(d);
    } while (slot.again);
    S.inflight.delete(id);
    return d;
  })();
  S.inflight.set(id, slot);
  return slot.promise;
}

function show(d) {
  S.details.set(d.incident_id, d);
  if (S.view && S.view.name === "board") placeCard(d);
  if (S.view && S.view.name === "incident" && S.view.id === d.incident_id && S.page) {
    fillIncident(S.page, d);
    fillTimeline(d);
  }
  updateCounts();
}

/* ---------- alerts ---------- */

function raiseAlert(d, repeat) {
  const banner = $("banner");
  const caller = d.caller || {};
  const text = [
    d.origin === "drill" ? `【${t("drill")}】` : "",
    `${t(repeat ? "repeat_alarm" : "new_alarm")}${t("colon")}`,
    placeName(d),
    " ",
    personLabel(caller),
    " ",
    phoneEl(caller.phone, { class: "phone" }),
  ];
  const viewButton = h("button", {
    type: "button",
    text: t("view"),
    onclick: () => {
      hideBanner();
      const card = S.cards.get(d.incident_id);
      if (S.view.name === "board" && card) {
        card.root.scrollIntoView({ block: "center" });
        card.root.focus();
      } else {
        location.hash = `#/incident/${encodeURIComponent(d.incident_id)}`;
      }
    },
  });
  fill(banner,
    h("span", { class: "banner-text" }, text),
    viewButton,
    h("button", { type: "button", text: t("dismiss"), onclick: hideBanner }),
  );
  banner.dataset.incident = d.incident_id;
  banner.hidden = false;
  banner.classList.remove("flash");
  void banner.offsetWidth;
  banner.classList.add("flash");
  const card = S.cards.get(d.incident_id);
  if (card) {
    card.root.classList.remove("fresh");
    void card.root.offsetWidth;
    card.root.classList.add("fresh");
  }
  S.unseen += 1;
  updateTitle();
  siren();
}

function hideBanner() {
  const banner = $("banner");
  banner.hidden = true;
  fill(banner);
  S.unseen = 0;
  updateTitle();
}

function updateTitle() {
  const base = `6995 ${t("app_title")}`;
  document.title = S.unseen ? `(${S.unseen}) ${t("new_alarm")} · ${base}` : base;
}

/* ---------- incident rendering (board card and incident page share it) ---------- */

function inFilter(d) {
  return !S.filter || d.village === S.filter;
}

function createIncident(d, full) {
  const root = h("article", {
    class: full ? "incident full" : "incident card",
    tabindex: "-1",
    dataset: { incident: d.incident_id },
    "aria-labelledby": `h-${d.incident_id}`,
  });
  const head = h("div", { class: "head" });
  const deadlines = h("dl", { class: "deadlines" });
  const accepted = h("p", { class: "accepted" });
  const members = h("ul", { class: "members", "aria-label": t("members") });
  const actions = createActions(d.incident_id);
  root.append(head, deadlines, accepted, h("h3", { class: "sub", text: t("members") }), members, actions.root);
  if (!full) {
    root.append(
      h("p", { class: "more" }, h("a", { href: `#/incident/${encodeURIComponent(d.incident_id)}`, text: t("details") })),
    );
  }
  const card = { root, head, deadlines, accepted, members, actions, full };
  fillIncident(card, d);
  return card;
}

function fillIncident(card, d) {
  const caller = d.caller || {};
  card.root.dataset.status = d.status;
  card.root.dataset.covered = String(Boolean(d.covered));
  card.root.classList.toggle("closed", CLOSED.has(d.status));
  card.root.classList.toggle("is-covered", Boolean(d.covered));
  const badges = [
    h("span", { class: `badge status s-${d.status}` }, val(statusName(d))),
    h("span", {
      class: `badge ${d.covered ? "ok" : "warn"} coverage`,
      text: d.covered ? t("covered") : t("not_covered"),
    }),
  ];
  if (d.origin === "drill") badges.unshift(h("span", { class: "badge warn drill", text: t("drill") }));
  if (d.kind === "unregistered") badges.push(h("span", { class: "badge warn", text: t("unregistered") }));
  if (d.silent) badges.push(h("span", { class: "badge bad silent", text: t("silent") }));
  if (d.origin && d.origin !== "call") {
    const by = d.opened_by ? [` · ${t("opened_by")} `, val(d.opened_by.name || d.opened_by.token_id, "opened-by")] : null;
    badges.push(h("span", { class: "badge origin" }, t(`origin_${d.origin}`), by));
  }
  card.root.classList.toggle("is-silent", Boolean(d.silent));
  if (d.urgency > 1) badges.push(h("span", { class: "badge bad", text: t("urgency", { n: d.urgency }) }));
  if (d.escalation_tier > 0) badges.push(h("span", { class: "badge bad", text: t("tier", { n: d.escalation_tier }) }));
  const label = d.origin === "drill" ? [`【${t("drill")}】`, placeName(d)] : [placeName(d), " · ", personLabel(caller)];
  const title = card.full
    ? h("h2", { id: `h-${d.incident_id}`, class: "title" }, label)
    : h("h2", { id: `h-${d.incident_id}`, class: "title" }, h("a", { href: `#/incident/${encodeURIComponent(d.incident_id)}` }, label));
  fill(card.head,
    title,
    h("div", { class: "badges" }, badges),
    h(
      "p",
      { class: "meta" },
      h("span", {}, `${t("caller")} `, d.silent
        ? h("span", { class: "phone", dir: "ltr", text: phoneText(caller.phone) })
        : h("a", { href: `tel:${phoneText(caller.phone)}`, class: "phone", dir: "ltr", text: phoneText(caller.phone) })),
      h("span", {}, ` · ${t("raised_at")} `, h("time", { datetime: d.raised_at, text: timeOf(d.raised_at, d.time_zone, card.full ? "full" : "zone") }), " "),
      h("span", { class: "ago", dataset: { since: d.raised_at } }),
    ),
  );
  const where = caller.place;
  if (where && (where.address || where.geo)) {
    card.head.append(
      h(
        "p",
        { class: "where" },
        `${t("location")}${t("colon")}`,
        where.where ? val(where.where, "where") : null,
        where.geo ? [" ", h("a", { href: where.geo, class: "geo", dir: "ltr", text: `${t("map")} ${where.geo.slice(4)}` })] : null,
      ),
    );
  }
  if (CLOSED.has(d.status) && (d.category || d.cancel_reason)) {
    const outcome = d.category ? t(`cat_${d.category}`) : t(`reason_${d.cancel_reason}`);
    card.head.append(
      h("p", { class: "outcome" }, `${t("resolution")}${t("colon")}`, val(outcome, "category"), d.note ? [" · ", val(d.note, "note")] : null),
    );
  }
  fill(card.deadlines,
    h("dt", { text: t("ack_deadline") }),
    deadline(d.raised_at, d.ack_deadline_at, d.covered_at, "ack"),
    h("dt", { text: t("arrival_deadline") }),
    d.arrival_deadline_at
      ? deadline(d.covered_at, d.arrival_deadline_at, d.first_arrival_at, "arrival")
      : h("dd", { class: "muted", dataset: { deadline: "arrival" }, text: t("after_cover") }),
  );
  const acceptedBy = (d.responders || []).filter((r) => r.accepted_at);
  fill(card.accepted,
    h("strong", { text: `${t("accepted_by")}${t("colon")}` }),
    acceptedBy.length ? joined(acceptedBy.map((r) => h("span", { class: "person" }, personLabel(r), proxyNote(r))), t("list_sep")) : t("nobody_yet"),
  );
  fill(card.members, ...(d.responders || []).map((r) => member(r, d.time_zone)));
  updateActions(card.actions, d);
  tickCard(card.root);
}

function proxyNote(r) {
  if (!r.accepted_proxy) return null;
  const by = r.accepted_actor || {};
  return h("span", { class: "proxy", text: ` ${t("proxy_by", { name: by.name || phoneText(by.phone || "") || "?" })}` });
}

function deadline(fromIso, dueIso, metIso, kind) {
  const dd = h("dd", { class: "deadline", dataset: { deadline: kind, due: dueIso || "" } });
  if (metIso) {
    const took = (ms(metIso) - ms(fromIso)) / 1000;
    dd.dataset.met = "1";
    dd.classList.add(ms(metIso) > ms(dueIso) ? "late" : "met");
    dd.textContent = `✓ ${t("done_in", { t: duration(took) })}`;
  }
  return dd;
}

function tickCard(root) {
  const now = Date.now();
  for (const el of root.querySelectorAll(".ago[data-since]")) {
    el.textContent = `(${t("ago", { d: duration((now - ms(el.dataset.since)) / 1000) })})`;
  }
  if (root.classList.contains("closed")) {
    for (const el of root.querySelectorAll("dd.deadline:not([data-met])")) el.textContent = "—";
    return;
  }
  for (const el of root.querySelectorAll("dd.deadline:not([data-met])")) {
    const left = (ms(el.dataset.due) - now) / 1000;
    el.classList.toggle("overdue", left < 0);
    el.classList.toggle("soon", left >= 0 && left < 30);
    el.textContent = left >= 0 ? t("left", { t: clock(left) }) : t("overdue", { t: clock(-left) });
  }
}

function member(r, zone) {
  const channels = (map) => Object.keys(map || {}).length > 0;
  const chips = [];
  if (r.state === "pending") chips.push(h("span", { class: "chip", text: t("st_pending") }));
  const sim = r.simulated ? t("st_simulated") : "";
  if (channels(r.notified)) chips.push(h("span", { class: "chip done", text: `${t("st_notified")}${sim} ✓` }));
  if (channels(r.delivered)) chips.push(h("span", { class: "chip done", text: `${t("st_delivered")}${sim} ✓` }));
  else if (channels(r.failed)) {
    chips.push(h("span", { class: "chip bad", title: Object.values(r.failed).join("; "), text: t("st_failed") }));
  }
  if (r.neighbour_group) chips.push(h("span", { class: "chip neighbour", text: t("neighbour_of", { g: r.neighbour_group }) }));
  else if (!r.recipient && ["officer", "assistant", "leader", "household"].includes(r.role)) chips.push(h("span", { class: "chip away", text: t("st_away") }));
  if (r.stands_in_for) chips.push(h("span", { class: "chip substitute", text: t("stands_in", { who: phoneText(r.stands_in_for) }) }));
  if (r.arrived_at) chips.push(h("span", { class: "chip strong", text: `${t("st_arrived")} ${timeOf(r.arrived_at, zone)}` }));
  else if (r.accepted_at) chips.push(h("span", { class: "chip strong", text: `${t("st_accepted")} ${timeOf(r.accepted_at, zone)}` }));
  else if (r.declined_at) chips.push(h("span", { class: "chip bad", text: `${t("st_declined")} ${timeOf(r.declined_at, zone)}` }));
  const mine = S.myPhone && samePhone(S.myPhone, r.phone);
  return h(
    "li",
    { class: `member st-${r.state}${mine ? " mine" : ""}`, dataset: { phone: r.phone, state: r.state } },
    h("span", { class: "who" }, r.name ? val(r.name, "name") : phoneEl(r.phone, { class: "name" }), " ", val(roleName(r.role, r.role_zh), "role")),
    h("a", { class: "phone", href: `tel:${phoneText(r.phone)}`, dir: "ltr", text: phoneText(r.phone) }),
    h("span", { class: "chips" }, chips),
  );
}

function createActions(id) {
  const select = h("select", { class: "responder", id: `who-${id}` });
  const buttons = {};
  const make = (action, cls) => {
    buttons[action] = h("button", {
      type: "button",
      class: `act ${cls || ""}`,
      dataset: { action },
      text: t(`act_${action}`),
      onclick: () => (action === "resolve" || action === "cancel" ? toggleForm(ui, action) : answer(ui, action)),
    });
    return buttons[action];
  };
  const category = h(
    "select",
    { id: `cat-${id}`, required: true },
    h("option", { value: "", text: "—" }),
    CATEGORIES.map((c) => h("option", { value: c, text: t(`cat_${c}`) })),
  );
  const reason = h(
    "select",
    { id: `reason-${id}` },
    CANCEL_REASONS.map((c) => h("option", { value: c, text: t(`reason_${c}`) })),
  );
  const note = h("textarea", { id: `note-${id}`, rows: "2", maxlength: "500" });
  const categoryRow = h("div", { class: "field" }, h("label", { for: `cat-${id}`, text: t("category") }), category);
  const reasonRow = h("div", { class: "field" }, h("label", { for: `reason-${id}`, text: t("reason") }), reason);
  const confirm = h("button", { type: "submit", class: "primary", dataset: { confirm: "" } });
  const form = h(
    "form",
    { class: "more-form", hidden: true, onsubmit: (e) => submitForm(e, ui) },
    categoryRow,
    reasonRow,
    h("div", { class: "field" }, h("label", { for: `note-${id}`, text: t("note") }), note),
    h(
      "div",
      { class: "row" },
      confirm,
      h("button", { type: "button", text: t("close_form"), onclick: () => closeForm(ui) }),
    ),
  );
  const row = h("div", { class: "buttons" }, make("accept", "primary"), make("arrived"), make("decline"), make("resolve"), make("cancel", "danger"));
  const root = h(
    "div",
    { class: "actions" },
    h("div", { class: "field who-field" }, h("label", { for: `who-${id}`, text: t("answer_as") }), select),
    row,
    form,
  );
  const ui = { id, root, row, select, buttons, form, category, reason, note, confirm, categoryRow, reasonRow, mode: null, options: "" };
  select.addEventListener("change", () => {
    ui.touched = true;
  });
  return ui;
}

function updateActions(ui, d) {
  const people = (d.responders || []).map((r) => ({ phone: r.phone, label: `${personText(r)} ${iso(phoneText(r.phone))}` }));
  if (d.caller && d.caller.phone && !people.some((p) => p.phone === d.caller.phone)) {
    people.push({ phone: d.caller.phone, label: `${t("caller")} ${personText(d.caller)} ${iso(phoneText(d.caller.phone))}` });
  }
  const signature = S.lang + S.myPhone + people.map((p) => p.phone).join(",");
  if (signature !== ui.options) {
    const current = ui.select.value;
    const mine = people.find((p) => samePhone(S.myPhone, p.phone));
    fill(ui.select,
      h("option", { value: "", text: t("choose") }),
      people.map((p) =>
        h("option", { value: p.phone, text: mine && mine.phone === p.phone ? `${t("me")} · ${p.label}` : p.label }),
      ),
    );
    ui.select.value = ui.touched && people.some((p) => p.phone === current) ? current : mine ? mine.phone : current;
    ui.options = signature;
  }
  const closed = CLOSED.has(d.status);
  for (const button of Object.values(ui.buttons)) button.disabled = closed || ui.busy;
  ui.select.disabled = closed;
  if (closed) closeForm(ui);
  ui.root.hidden = closed;
}

function toggleForm(ui, mode) {
  if (ui.mode === mode) {
    closeForm(ui);
    return;
  }
  ui.mode = mode;
  ui.form.hidden = false;
  ui.categoryRow.hidden = mode !== "resolve";
  ui.reasonRow.hidden = mode !== "cancel";
  ui.confirm.textContent = t(mode === "resolve" ? "confirm_resolve" : "confirm_cancel");
  ui.confirm.className = mode === "cancel" ? "danger" : "primary";
  ui.confirm.dataset.confirm = mode;
  for (const [action, button] of Object.entries(ui.buttons)) button.setAttribute("aria-expanded", String(action === mode));
  (mode === "resolve" ? ui.category : ui.reason).focus();
}

function closeForm(ui) {
  ui.mode = null;
  ui.form.hidden = true;
  for (const button of Object.values(ui.buttons)) button.removeAttribute("aria-expanded");
}

function submitForm(event, ui) {
  event.preventDefault();
  if (ui.mode === "resolve") {
    if (!ui.category.value) {
      toast(t("need_category"), "bad", ui.form);
      ui.category.focus();
      return;
    }
    answer(ui, "resolve", { category: ui.category.value, note: ui.note.value.trim() });
  } else if (ui.mode === "cancel") {
    answer(ui, "cancel", { reason: ui.reason.value, note: ui.note.value.trim() });
  }
}

/* Where a card's message goes: under its open form (so the form does not move), else under its buttons. */
function below(ui) {
  return ui.form.hidden ? ui.row : ui.form;
}

async function answer(ui, action, extra) {
  const responder = ui.select.value;
  if (!responder) {
    toast(t("need_responder"), "bad", below(ui));
    ui.select.focus();
    return;
  }
  const d = S.details.get(ui.id);
  const who = d ? nameOf(d, responder) : responder;
  const what = t(`did_${action}`);
  setBusy(ui, true);
  try {
    const result = await api(`v1/incidents/${encodeURIComponent(ui.id)}/responses`, {
      method: "POST",
      body: { responder, action, ...(extra || {}) },
      headers: { "Idempotency-Key": randomId() },
    });
    const said = result.proxy ? "recorded_proxy" : "recorded";
    let text = result.recorded.length ? t(said, { who, what }) : t("nothing_changed", { who, what });
    if (result.recorded.includes("IncidentCovered")) text += ` · ${t("now_covered")}`;
    if (CLOSED.has(result.status)) text += ` · ${t("closed_now")}`;
    toast(text, "ok", below(ui));
    if (action === "resolve" || action === "cancel") {
      ui.note.value = "";
      closeForm(ui);
    }
    if (d) show({ ...d, status: result.status, covered: result.covered, status_zh: statusZh(result.status, d) });
    await refresh(ui.id);
    // the card may have grown (who accepted, for whom): keep the answer's message in sight
    const shown = toast.el;
    if (shown && shown.isConnected && shown.classList.contains("show") && shown.previousElementSibling) {
      shown.scrollIntoView({ block: "nearest" });
    }
  } catch (exc) {
    const key = { 403: "err_403", 404: "err_404", 409: "err_409", 422: "err_422" }[exc.status];
    toast(key ? t(key, { msg: exc.message }) : exc.status ? t("err_other", { code: exc.status, msg: exc.message }) : exc.message, "bad", below(ui));
    if (exc.status === 404) refresh(ui.id);
  } finally {
    setBusy(ui, false);
  }
}

function statusZh(status, d) {
  const zh = { raised: "已报警", notifying: "通知中", acknowledged: "已接警", on_scene: "已到场", resolved: "已处置", cancelled: "已取消" };
  return status === d.status ? d.status_zh : zh[status] || status;
}

function nameOf(d, phone) {
  const r = (d.responders || []).find((x) => x.phone === phone);
  if (r) return personText(r);
  return d.caller && d.caller.phone === phone ? personText(d.caller) : iso(phoneText(phone));
}

function setBusy(ui, busy) {
  ui.busy = busy;
  ui.root.setAttribute("aria-busy", String(busy));
  const d = S.details.get(ui.id);
  const closed = d && CLOSED.has(d.status);
  for (const button of Object.values(ui.buttons)) button.disabled = busy || closed;
  ui.confirm.disabled = busy;
}

/* ---------- board ---------- */

function renderBoard() {
  S.view = { name: "board" };
  S.cards.clear();
  const villageSelect = h(
    "select",
    {
      id: "filter",
      onchange: (e) => {
        S.filter = e.target.value;
        localStorage.setItem("dispatch.filter", S.filter);
        for (const d of S.details.values()) placeCard(d);
        updateCounts();
      },
    },
    h("option", { value: "", text: t("all_villages") }),
    S.villages.map((v) => h("option", { value: v, text: iso(v) })),
  );
  villageSelect.value = S.filter;
  const myPhone = h("output", {
    id: "my-phone",
    dir: "ltr",
    "aria-describedby": "my-phone-hint",
    text: S.myPhone ? phoneText(S.myPhone) : "—",
  });
  const soundButton = h("button", {
    id: "sound",
    type: "button",
    "aria-pressed": String(S.sound),
    text: `${t("sound")}${t("colon")}${t(S.sound ? "sound_on" : "sound_off")}`,
    onclick: () => {
      S.sound = !S.sound;
      localStorage.setItem("dispatch.sound", S.sound ? "on" : "off");
      soundButton.setAttribute("aria-pressed", String(S.sound));
      soundButton.textContent = `${t("sound")}${t("colon")}${t(S.sound ? "sound_on" : "sound_off")}`;
      unlockAudio();
    },
  });
  const me = S.me;
  const scope = me.villages ? joined(me.villages.map((v) => val(v, "village")), t("list_sep")) : t("all_villages");
  const list = h("div", { id: "board", class: "board", "aria-live": "off" });
  setMain(
    h(
      "section",
      { class: "toolbar", "aria-label": t("nav_board") },
      h("p", { class: "whoami" }, h("strong", {}, val(me.name)), ` · ${t(`role_${me.role}`)} · `, me.villages && !me.villages.length ? "—" : scope),
      h("div", { class: "field" }, h("label", { for: "filter", text: t("village_filter") }), villageSelect),
      h(
        "div",
        { class: "field" },
        h("label", { for: "my-phone", text: t("my_number") }),
        myPhone,
        h("span", { id: "my-phone-hint", class: "hint", text: t(S.myPhone ? "my_number_hint" : "my_number_none") }),
      ),
      h("div", { class: "field buttons" }, soundButton, h("button", { type: "button", text: t("sound_test"), onclick: () => { unlockAudio(); siren(); } })),
    ),
    reportForm(me),
    absencePanel(me),
    broadcastPanel(me),
    h("p", { id: "counts", class: "counts", role: "status" }),
    list,
  );
  list.append(h("p", { class: "empty muted", text: t("loading") }));
  loadBoard();
}

function reportForm(me) {
  if (!["officer", "duty_desk", "admin"].includes(me.role)) return null;
  const field = (id, label, input) => h("div", { class: "field" }, h("label", { for: id, text: t(label) }), input);
  const village = h("select", { id: "report-village", required: true }, S.villages.map((v) => h("option", { value: v, text: iso(v) })));
  const group = h("input", { id: "report-group", required: true, size: 4 });
  const origin = h("select", { id: "report-origin" }, h("option", { value: "walk_in", text: t("origin_walk_in") }), h("option", { value: "transfer_110", text: t("origin_transfer_110") }));
  const caller = h("input", { id: "report-caller", type: "tel", inputmode: "tel" });
  const name = h("input", { id: "report-name", maxlength: 64 });
  const submit = h("button", { type: "submit", text: t("report_submit") });
  const form = h(
    "form",
    {
      class: "report-form",
      onsubmit: async (e) => {
        e.preventDefault();
        submit.disabled = true;
        try {
          const result = await api("v1/incidents", {
            method: "POST",
            body: { report_id: randomId(), village: village.value, group: group.value.trim(), origin: origin.value, caller: caller.value.trim(), caller_name: name.value.trim() },
          });
          toast(t("report_done"), "ok", form);
          location.hash = `#/incident/${encodeURIComponent(result.incident_id)}`;
        } catch (exc) {
          toast(exc.status ? t("err_other", { code: exc.status, msg: exc.message }) : exc.message, "bad", form);
        } finally {
          submit.disabled = false;
        }
      },
    },
    field("report-village", "report_village", village),
    field("report-group", "report_group", group),
    field("report-origin", "report_origin", origin),
    field("report-caller", "report_caller", caller),
    field("report-name", "report_name", name),
    h("div", { class: "field buttons" }, submit),
  );
  return h("details", { class: "report" }, h("summary", { text: t("report_open") }), form);
}

function absencePanel(me) {
  if (!["officer", "duty_desk", "admin"].includes(me.role)) return null;
  const field = (id, label, input) => h("div", { class: "field" }, h("label", { for: id, text: t(label) }), input);
  const number = h("input", { id: "absence-number", type: "tel", inputmode: "tel", required: true });
  const from = h("input", { id: "absence-from", type: "datetime-local" });
  const until = h("input", { id: "absence-until", type: "datetime-local", required: true });
  const substitute = h("input", { id: "absence-substitute", type: "tel", inputmode: "tel" });
  const subName = h("input", { id: "absence-substitute-name", maxlength: 64 });
  const note = h("input", { id: "absence-note", maxlength: 200 });
  const submit = h("button", { type: "submit", text: t("absence_submit") });
  const list = h("ul", { id: "absences", class: "absences" });
  const short = h("ul", { id: "short-groups", class: "short-groups" });
  const form = h(
    "form",
    {
      class: "absence-form",
      onsubmit: async (e) => {
        e.preventDefault();
        submit.disabled = true;
        try {
          const body = { until: new Date(until.value).toISOString(), note: note.value.trim() };
          if (from.value) body.from = new Date(from.value).toISOString();
          if (substitute.value.trim()) body.substitute = substitute.value.trim();
          if (subName.value.trim()) body.substitute_name = subName.value.trim();
          await api(`v1/members/${encodeURIComponent(number.value.trim())}/absence`, { method: "PUT", body });
          toast(t("absence_done"), "ok", form);
          loadAbsences(list, short);
        } catch (exc) {
          toast(exc.status ? t("err_other", { code: exc.status, msg: exc.message }) : exc.message, "bad", form);
        } finally {
          submit.disabled = false;
        }
      },
    },
    field("absence-number", "absence_number", number),
    field("absence-from", "absence_from", from),
    field("absence-until", "absence_until", until),
    field("absence-substitute", "absence_substitute", substitute),
    field("absence-substitute-name", "absence_substitute_name", subName),
    field("absence-note", "absence_note", note),
    h("div", { class: "field buttons" }, submit),
  );
  loadAbsences(list, short);
  return h(
    "details",
    { class: "absence", id: "absence-panel" },
    h("summary", { text: t("absence_open") }),
    list,
    h("h3", { text: t("short_groups") }),
    short,
    form,
  );
}

async function loadAbsences(list, short) {
  let absences, readiness;
  try {
    [absences, readiness] = await Promise.all([api("v1/absences"), api("v1/reports/readiness")]);
  } catch (exc) {
    toast(exc.message, "bad");
    return;
  }
  fill(
    list,
    absences.absences.length
      ? absences.absences.map((a) => {
          const x = a.absence;
          const who = x.substitute ? `${x.substitute_name || ""} ${phoneText(x.substitute)}`.trim() : t("absence_nobody");
          const end = h("button", {
            type: "button",
            class: "end-absence",
            text: t("absence_end"),
            onclick: async () => {
              try {
                await api(`v1/members/${encodeURIComponent(a.phone)}/absence`, { method: "DELETE" });
                toast(t("absence_ended"), "ok", list);
                loadAbsences(list, short);
              } catch (exc) {
                toast(exc.message, "bad", list);
              }
            },
          });
          return h(
            "li",
            { class: `absence-row${x.substitute ? "" : " bad"}`, dataset: { phone: a.phone } },
            h("span", { class: "who" }, val(a.name || phoneText(a.phone), "name"), " ", val(a.groups.map((g) => `${g.village}/${g.group} ${g.role_zh}`).join(t("list_sep")), "role")),
            ` ${t(x.absent_now ? "absence_now" : "absence_planned")} ${x.from_text} ${t("absence_until_text")} ${x.until_text}${x.note ? ` · ${x.note}` : ""} · ${t("absence_by")}${t("colon")}`,
            h("span", { class: "substitute", text: who }),
            " ",
            end,
          );
        })
      : [h("li", { class: "muted", text: t("absence_none") })],
  );
  const gaps = readiness.groups_without_quorum
    .map((g) => ({ g, missing: g.missing.filter((m) => m.why === "absent") }))
    .filter((x) => x.missing.length);
  fill(
    short,
    gaps.length
      ? gaps.map(({ g, missing }) =>
          h("li", { class: "short bad", text: `${g.village}/${g.group} ${missing.map((m) => t("short_missing", { roles: m.roles_zh })).join(t("list_sep"))}` }),
        )
      : [h("li", { class: "muted", text: "—" })],
  );
}

/* ---------- broadcast warnings ---------- */

const BROADCAST_KINDS = ["typhoon", "flood", "missing_child", "other"];
const BROADCAST_PEOPLE = 200;

// One run at a time; a call while one runs asks for one more run after it (the newest data wins).
function coalesced(fn) {
  let running = null;
  let again = false;
  return function run() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await fn();
      } while (again);
      running = null;
    })();
    return running;
  };
}

function broadcastPanel(me) {
  if (!["officer", "duty_desk", "admin"].includes(me.role)) return null;
  const list = h("ul", { id: "broadcasts", class: "broadcasts", "aria-live": "polite" });
  const people = h("div", { id: "broadcast-people", class: "broadcast-people" });
  const running = h("span", { id: "broadcasts-running", class: "running" });
  S.bc = { list, people, running, data: [] };
  reloadBroadcasts();
  return h(
    "details",
    { class: "broadcast", id: "broadcast-panel" },
    h("summary", {}, t("bc_open"), running),
    list,
    people,
    ["officer", "admin"].includes(me.role) ? broadcastForm(me) : null,
  );
}

function broadcastForm(me) {
  const field = (id, label, input) => h("div", { class: "field" }, h("label", { for: id, text: t(label) }), input);
  const villages = h("input", { id: "bc-villages", required: true, value: (me.villages || []).join(", ") });
  const kind = h("select", { id: "bc-kind" }, BROADCAST_KINDS.map((k) => h("option", { value: k, text: t(`kind_${k}`) })));
  const message = h("textarea", { id: "bc-message", required: true, maxlength: 300, rows: 2 });
  const submit = h("button", { type: "submit", text: t("bc_submit") });
  const form = h(
    "form",
    {
      class: "broadcast-form",
      onsubmit: async (e) => {
        e.preventDefault();
        submit.disabled = true;
        try {
          const chosen = villages.value.split(/[,，、\s]+/).filter(Boolean);
          const started = await api("v1/broadcasts", {
            method: "POST",
            body: { id: randomId(), villages: chosen, kind: kind.value, message: message.value.trim() },
          });
          toast(t("bc_done"), "ok", form);
          message.value = "";
          S.bcSelected = started.id;
          reloadBroadcasts();
        } catch (exc) {
          toast(exc.status ? t("err_other", { code: exc.status, msg: exc.message }) : exc.message, "bad", form);
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("h3", { text: t("bc_start") }),
    field("bc-villages", "bc_villages", villages),
    field("bc-kind", "bc_kind", kind),
    field("bc-message", "bc_message", message),
    h("div", { class: "field buttons" }, submit),
  );
  return form;
}

function broadcastsShown() {
  return Boolean(S.bc && S.bc.list.isConnected);
}

function reloadBroadcasts() {
  if (!broadcastsShown()) return;
  loadBroadcasts();
  loadBroadcastPeople();
}

function onBroadcastEvent(data) {
  if (!broadcastsShown()) return;
  loadBroadcasts();
  if (S.bcSelected && S.bcSelected === data.broadcast_id) loadBroadcastPeople();
}

function sum(values) {
  return Object.values(values || {}).reduce((a, b) => a + b, 0);
}

function countEl(key, value, title, extra) {
  return h("span", { class: `bc-count ${key}`, dataset: { count: key }, title: title || null }, `${t(`bc_${key}`)} `, h("b", { class: "n", text: String(value) }), extra || null);
}

function perChannel(values) {
  const parts = Object.entries(values || {}).map(([c, n]) => `${t(`ch_${c}`)} ${n}`);
  return parts.length > 1 ? h("span", { class: "muted by-channel", text: `（${parts.join(" · ")}）` }) : null;
}

const loadBroadcasts = coalesced(async () => {
  if (!broadcastsShown()) return;
  let data;
  try {
    data = await api("v1/broadcasts");
  } catch (exc) {
    if (exc.status !== 404) toast(exc.message, "bad");
    return;
  }
  if (!broadcastsShown()) return;
  const rows = data.broadcasts;
  const sending = rows.filter((b) => b.counts.pending > 0).length;
  S.bc.running.textContent = sending ? t("bc_running", { n: sending }) : "";
  fill(S.bc.list, rows.length ? rows.map(broadcastRow) : [h("li", { class: "muted", text: t("bc_none") })]);
});

function broadcastRow(b) {
  const c = b.counts;
  const selected = S.bcSelected === b.id;
  const toggle = h("button", {
    type: "button",
    class: "bc-show",
    "aria-expanded": selected ? "true" : "false",
    text: t(selected ? "bc_hide" : "bc_show"),
    onclick: () => {
      S.bcSelected = S.bcSelected === b.id ? null : b.id;
      loadBroadcasts();
      loadBroadcastPeople();
    },
  });
  return h(
    "li",
    { class: `broadcast-row${selected ? " selected" : ""}${c.pending ? " sending" : ""}`, dataset: { broadcast: b.id } },
    h(
      "div",
      { class: "bc-head" },
      h("strong", { class: "bc-kind", text: t(`kind_${b.kind}`) }),
      " ",
      joined(b.villages.map((v) => val(v, "village")), t("list_sep")),
      ` · ${timeOf(b.started_at, null, "full")}`,
      b.started_by ? [` · ${t("bc_by")}${t("colon")}`, val(b.started_by, "name")] : null,
    ),
    h("p", { class: "bc-message" }, val(b.message)),
    h(
      "p",
      { class: "bc-counts" },
      countEl("total", c.recipients),
      countEl("handed", sum(c.handed), null, perChannel(c.handed)),
      countEl("reached", c.reached, t("bc_reached_hint")),
      countEl("heard", c.heard, t("bc_heard_hint")),
      countEl("failed", sum(c.failed), null, sum(c.failed) ? perChannel(c.failed) : null),
      c.pending ? countEl("pending", c.pending) : h("span", { class: "bc-count done", text: t("bc_finished") }),
      toggle,
    ),
  );
}

function channelCell(state) {
  if (state === "handed") return h("span", { class: "chip ok", text: t("bc_reached") });
  if (state === "pending") return h("span", { class: "chip", text: t("bc_pending") });
  return h("span", { class: "chip bad", title: String(state).replace(/^failed: /, ""), text: t("bc_failed") });
}

/* The report as a CSV file (`?format=csv`): fetched with the token (a plain link would carry none), then
   saved from a blob URL. */
async function downloadBroadcast(id, total) {
  let file;
  try {
    file = await api(`v1/broadcasts/${encodeURIComponent(id)}?format=csv`, { blob: true });
  } catch (exc) {
    toast(exc.message, "bad");
    return;
  }
  const url = URL.createObjectURL(file);
  const link = h("a", { href: url, download: `broadcast-${id}.csv`, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  toast(t("bc_csv_saved", { total }));
}

const loadBroadcastPeople = coalesced(async () => {
  if (!broadcastsShown()) return;
  const id = S.bcSelected;
  if (!id) {
    fill(S.bc.people);
    return;
  }
  let d;
  try {
    d = await api(`v1/broadcasts/${encodeURIComponent(id)}?limit=${BROADCAST_PEOPLE}`);
  } catch (exc) {
    if (exc.status === 404) S.bcSelected = null;
    else toast(exc.message, "bad");
    fill(S.bc.people);
    return;
  }
  if (!broadcastsShown() || S.bcSelected !== id) return;
  const head = h("tr", {}, h("th", { text: t("bc_phone") }), h("th", { text: t("bc_name") }), h("th", { text: t("bc_role") }), d.channels.map((c) => h("th", { text: t(`ch_${c}`) })), h("th", { text: t("bc_heard") }));
  const rows = d.people.map((p) =>
    h(
      "tr",
      { dataset: { phone: p.phone }, class: p.heard ? "heard" : null },
      h("td", {}, phoneEl(p.phone)),
      h("td", {}, val(p.name, "name")),
      h("td", {}, val(roleName(p.role, p.role_zh), "role")),
      d.channels.map((c) => h("td", { class: `ch ${c}` }, channelCell(p[c]))),
      h("td", { class: "receipt" }, p.heard ? `${timeOf(p.heard_at, null)} · ${t(`via_${p.heard_via}`)}` : h("span", { class: "muted", text: t("bc_not_heard") })),
    ),
  );
  fill(
    S.bc.people,
    h("h3", { text: `${t("bc_people")}${t("colon")}${t(`kind_${d.kind}`)}` }),
    d.counts.recipients > d.people.length ? h("p", { class: "muted", text: t("bc_people_more", { total: d.counts.recipients, n: d.people.length }) }) : null,
    // the whole list as a file, with whole numbers: for who may export personal data (admin)
    S.me && S.me.role === "admin"
      ? h("button", { type: "button", id: "broadcast-csv", class: "secondary", onclick: () => downloadBroadcast(id, d.counts.recipients), text: t("bc_csv", { total: d.counts.recipients }) })
      : null,
    h("div", { class: "table-wrap" }, h("table", { id: "broadcast-table", dataset: { broadcast: id } }, h("thead", {}, head), h("tbody", {}, rows))),
  );
});

async function loadBoard() {
  const view = S.view;
  let rows;
  try {
    rows = (await api("v1/incidents?status=open&limit=200")).incidents;
  } catch (exc) {
    toast(exc.message, "bad");
    return;
  }
  if (S.view !== view) return;
  const open = new Set(rows.map((r) => r.incident_id));
  for (const id of [...S.details.keys()]) {
    if (!open.has(id) && !CLOSED.has(S.details.get(id).status)) refresh(id);
  }
  await Promise.all(rows.map((r) => refresh(r.incident_id)));
  view.loaded = true;
  updateCounts();
}

function placeCard(d) {
  const board = $("board");
  if (!board) return;
  const existing = S.cards.get(d.incident_id);
  if (!inFilter(d)) {
    if (existing) existing.root.remove();
    return;
  }
  let card = existing;
  if (card) {
    fillIncident(card, d);
  } else {
    if (CLOSED.has(d.status)) return;
    card = createIncident(d, false);
    card.root.dataset.shownAt = String(Date.now());
    S.cards.set(d.incident_id, card);
  }
  if (CLOSED.has(d.status)) {
    clearTimeout(card.removal);
    card.removal = setTimeout(() => dropCard(d.incident_id), 5000);
  }
  const cards = [...S.cards.values()]
    .filter((c) => inFilter(S.details.get(c.root.dataset.incident)))
    .sort((a, b) => ms(S.details.get(b.root.dataset.incident).raised_at) - ms(S.details.get(a.root.dataset.incident).raised_at));
  const position = cards.indexOf(card);
  const next = cards[position + 1];
  if (card.root.parentNode !== board || (next && card.root.nextSibling !== next.root) || (!next && board.lastChild !== card.root)) {
    if (next && next.root.parentNode === board) board.insertBefore(card.root, next.root);
    else board.append(card.root);
  }
}

function dropCard(id) {
  const card = S.cards.get(id);
  if (card) {
    card.root.remove();
    S.cards.delete(id);
  }
  S.details.delete(id);
  updateCounts();
}

function updateCounts() {
  const counts = $("counts");
  if (!counts) return;
  const open = [...S.details.values()].filter((d) => !CLOSED.has(d.status) && inFilter(d));
  const now = Date.now();
  const uncovered = open.filter((d) => !d.covered);
  const overdue = open.filter(
    (d) =>
      (!d.covered && ms(d.ack_deadline_at) < now) ||
      (d.arrival_deadline_at && !d.first_arrival_at && ms(d.arrival_deadline_at) < now),
  );
  fill(counts,
    h("span", { text: t("open_count", { n: open.length }) }),
    h("span", { class: uncovered.length ? "warn" : "", text: t("uncovered_count", { n: uncovered.length }) }),
    h("span", { class: overdue.length ? "bad" : "", text: t("overdue_count", { n: overdue.length }) }),
  );
  const board = $("board");
  if (!board || !S.view.loaded) return;
  const empty = board.querySelector(".empty");
  if (board.querySelector(".incident")) {
    if (empty) empty.remove();
  } else if (!empty) {
    board.append(h("p", { class: "empty muted", text: t("empty_board") }));
  } else {
    empty.textContent = t("empty_board");
  }
}

/* ---------- incident page ---------- */

async function renderIncidentPage(id) {
  S.view = { name: "incident", id };
  S.page = null;
  setMain(h("p", { class: "muted", text: t("loading") }));
  let d;
  try {
    d = await api(`v1/incidents/${encodeURIComponent(id)}`);
  } catch (exc) {
    if (S.view.id !== id) return;
    setMain(h("p", { class: "back" }, h("a", { href: "#/board", text: t("back") })), h("p", { class: "error", role: "alert", text: exc.status === 404 ? t("err_404") : exc.message }));
    return;
  }
  if (S.view.name !== "incident" || S.view.id !== id) return;
  S.details.set(id, d);
  S.page = createIncident(d, true);
  const timeline = h("ol", { id: "timeline", class: "timeline" });
  setMain(
    h("p", { class: "back" }, h("a", { href: "#/board", text: t("back") })),
    S.page.root,
    h("section", { class: "card", "aria-labelledby": "timeline-title" }, h("h2", { id: "timeline-title", text: t("timeline") }), timeline),
  );
  fillTimeline(d);
  S.page.root.focus();
}

function fillTimeline(d) {
  const list = $("timeline");
  if (!list) return;
  const people = new Map((d.responders || []).map((r) => [r.phone, r]));
  if (d.caller) people.set(d.caller.phone, d.caller);
  const start = ms(d.raised_at);
  fill(list,
    ...(d.timeline || []).map((e) =>
      h(
        "li",
        { class: `ev ev-${e.type}`, dataset: { type: e.type, seq: e.seq } },
        h("time", { datetime: e.at, text: timeOf(e.at, d.time_zone, "full") }),
        h("span", { class: "rel", text: `+${clock((ms(e.at) - start) / 1000)}` }),
        h("bdi", { class: "text", text: S.lang === "en" ? describeEn(e, people) : e.text }),
      ),
    ),
  );
}

/* Who an alerting decision reached: only people handed to a channel count as notified. */
function reachEn(r) {
  if (!r) return "";
  if (r.notified && r.unrouted) return `, ${r.notified} notified, ${r.unrouted} not (${iso(r.why)})`;
  if (r.notified) return `, ${r.notified} notified`;
  if (r.unrouted) return `, nobody notified (${iso(r.why)})`;
  return r.expected ? `, notifying ${r.expected}` : ", nobody to notify";
}

function byProxy(x) {
  return x.proxy && x.actor ? ` (recorded by ${iso(x.actor.name || phoneText(x.actor.phone || ""))} on their behalf)` : "";
}

function describeEn(e, people) {
  const x = e.detail || {};
  const who = (phone) => {
    const p = people.get(phone);
    return p ? `${iso(p.name || phoneText(phone))} (${iso(ROLE_EN[p.role] || p.role)})` : iso(phoneText(phone));
  };
  const caller = x.caller ? `${iso(x.caller.name || phoneText(x.caller.phone))} (${iso(phoneText(x.caller.phone))})` : "";
  switch (e.type) {
    case "AlarmRaised":
      return `${caller} dialed ${iso(x.callee || "6995")}: alarm raised${reachEn(e.reach)}`;
    case "UnregisteredCall":
      if (e.reach && !e.reach.expected) return `Unregistered number ${caller} dialed ${iso(x.callee || "6995")}: no duty desk configured, nobody notified`;
      return `Unregistered number ${caller} dialed ${iso(x.callee || "6995")}: sent to the duty desk${reachEn(e.reach)}`;
    case "CallRepeated":
      return `${caller} called again, urgency ${x.urgency}`;
    case "RespondersNotified":
      return `Notified ${(x.phones || []).length} people · ${x.channel}`;
    case "DeliverySucceeded":
      return `Delivered to ${(x.targets || []).length} people · ${x.channel}`;
    case "DeliveryFailed":
      if (x.channel === "none") return `Not notified: ${(x.failures || []).length} people (${iso([...new Set((x.failures || []).map((f) => f.reason))].join(", "))})`;
      return `${x.channel}: ${(x.failures || []).map((f) => `${who(f.phone)} not reached (${iso(f.reason)})`).join("; ")}`;
    case "ResponderAccepted":
      return `${who(x.phone)} accepted${byProxy(x)}`;
    case "ResponderDeclined":
      return `${who(x.phone)} cannot come`;
    case "ResponderArrived":
      return `${who(x.phone)} arrived on scene`;
    case "IncidentCovered":
      return x.kind === "relaxed"
        ? `Covered under the relaxed rule (${iso((x.relaxed || []).map((c) => c.join(" or ")).join(", "))} could not answer)`
        : "Covered: the officer and the leader or assistant have accepted";
    case "IncidentEscalated":
      return `Escalated to tier ${x.tier}: ${iso(x.reason)}${reachEn(e.reach)}`;
    case "IncidentResolved":
      return `${who(x.by)} resolved it (${iso(TEXT.en[`cat_${x.category}`] || x.category)})${x.note ? `: ${iso(x.note)}` : ""}`;
    case "IncidentCancelled":
      return `${who(x.by)} cancelled it (${iso(TEXT.en[`reason_${x.reason}`] || x.reason)})${x.note ? `: ${iso(x.note)}` : ""}`;
    default:
      return `${e.type}: ${iso(e.text)}`;
  }
}

/* ---------- village page ---------- */

function renderVillages(village) {
  S.view = { name: "village", village };
  if (!S.villages.length) {
    setMain(h("p", { class: "muted", text: t("no_villages") }));
    return;
  }
  const chosen = village && S.villages.includes(village) ? village : S.filter || S.villages[0];
  S.view.village = chosen;
  const picker = h(
    "select",
    { id: "village-pick", onchange: (e) => (location.hash = `#/village/${encodeURIComponent(e.target.value)}`) },
    S.villages.map((v) => h("option", { value: v, text: iso(v) })),
  );
  picker.value = chosen;
  const body = h("div", { id: "village-body" }, h("p", { class: "muted", text: t("loading") }));
  setMain(
    h("section", { class: "toolbar" }, h("div", { class: "field" }, h("label", { for: "village-pick", text: t("village_pick") }), picker)),
    h("h2", { id: "village-title", text: t("village_title", { v: iso(chosen) }) }),
    body,
  );
  loadVillage(chosen, body);
}

async function loadVillage(village, body) {
  const since = new Date(Date.now() - 30 * DAY_MS).toISOString();
  const query = `village=${encodeURIComponent(village)}&since=${encodeURIComponent(since)}`;
  let list;
  let report;
  try {
    [list, report] = await Promise.all([api(`v1/incidents?${query}&limit=1000`), api(`v1/reports/response-times?${query}`)]);
  } catch (exc) {
    fill(body, h("p", { class: "error", role: "alert", text: exc.message }));
    return;
  }
  if (!S.view || S.view.name !== "village" || S.view.village !== village) return;
  S.view.data = { rows: list.incidents, report };
  drawVillage(body);
}

function drawVillage(body) {
  const { rows, report } = S.view.data;
  const measures = report.measures || {};
  const p50 = (name) => (measures[name] && measures[name].p50 !== null ? duration(measures[name].p50) : "—");
  const covered = rows.filter((r) => r.covered_at).length;
  const tiles = h(
    "dl",
    { class: "tiles" },
    tile(t("total"), String(rows.length)),
    tile(t("covered_rate"), rows.length ? `${Math.round((100 * covered) / rows.length)}%` : "—"),
    tile(t("p50_accept"), p50("time_to_first_accept")),
    tile(t("p50_cover"), p50("time_to_covered")),
    tile(t("p50_arrive"), p50("time_to_arrival")),
  );
  // the village's last 30 days, in its own zone (the browser may be elsewhere)
  const zone = [report.time_zone].flat()[0];
  const days = [];
  for (let i = 29; i >= 0; i -= 1) {
    const day = dayKey(Date.now() - i * DAY_MS, zone);
    if (days[days.length - 1] !== day) days.push(day);
  }
  const specs = [
    ["accept", "chart_accept", "first_accept_at"],
    ["cover", "chart_cover", "covered_at"],
    ["arrive", "chart_arrive", "first_arrival_at"],
  ];
  const figures = specs.map(() => h("figure", { class: "card chart-card" }));
  const categories = h("figure", { class: "card chart-card" });
  fill(
    body,
    tiles,
    rows.length >= 1000 ? h("p", { class: "warn", text: t("truncated", { n: rows.length }) }) : null,
    h("p", { class: "muted", text: t("chart_note") }),
    h("div", { class: "charts" }, figures),
    categories,
  );
  const inner = (fig) => Math.max(280, Math.floor(fig.clientWidth - 26));
  specs.forEach(([key, label, field], i) => chart(figures[i], inner(figures[i]), key, t(label), series(rows, days, field, zone), days));
  categoryChart(categories, inner(categories), rows);
  S.view.drawnWidth = body.clientWidth;
}

function redrawOnResize() {
  const body = $("village-body");
  if (!body || !S.view || S.view.name !== "village" || !S.view.data) return;
  if (Math.abs(body.clientWidth - (S.view.drawnWidth || 0)) > 24) drawVillage(body);
}

function tile(label, value) {
  return h("div", { class: "tile" }, h("dt", { text: label }), h("dd", { text: value }));
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  if (!v.length) return null;
  const mid = (v.length - 1) / 2;
  return (v[Math.floor(mid)] + v[Math.ceil(mid)]) / 2;
}

function series(rows, days, field, zone) {
  const byDay = new Map(days.map((d) => [d, []]));
  for (const r of rows) {
    if (!r[field] || !r.raised_at) continue;
    const bucket = byDay.get(dayKey(ms(r.raised_at), zone));
    if (bucket) bucket.push((ms(r[field]) - ms(r.raised_at)) / 1000);
  }
  return days.map((day) => {
    const values = byDay.get(day);
    return { day, n: values.length, median: median(values), max: values.length ? Math.max(...values) : null, values };
  });
}

function niceStep(max) {
  const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400];
  return steps.find((step) => max / step <= 4) || Math.ceil(max / 4 / 86400) * 86400;
}

function chart(figure, W, key, name, points, days) {
  const H = 190;
  const left = 58;
  const right = 20;
  const bottom = 26;
  const top = 10;
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  const all = points.flatMap((p) => p.values);
  const n = all.length;
  const overall = median(all);
  const highest = Math.max(0, ...points.map((p) => p.median || 0));
  const step = niceStep(highest || 1);
  const maxY = Math.max(step, Math.ceil(highest / step) * step);
  const slot = plotW / days.length;
  const y = (v) => top + plotH - (v / maxY) * plotH;
  const label = n ? t("chart_label", { name, n, p: duration(overall) }) : `${name}${t("colon")}${t("chart_none")}`;
  const svg = s(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "chart", "data-chart": key, "data-count": String(n), "aria-label": label },
    s("title", {}, label),
  );
  for (let v = 0; v <= maxY + 1e-9; v += step) {
    svg.append(
      s("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: v === 0 ? "axis" : "grid" }),
      s("text", { x: left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, v === 0 ? "0" : duration(v)),
    );
  }
  const every = slot * 5 >= 44 ? 5 : 10;
  points.forEach((p, i) => {
    const x = left + i * slot;
    if ((points.length - 1 - i) % every === 0) {
      svg.append(s("text", { x: x + slot / 2, y: H - 8, class: "tick", "text-anchor": "middle" }, p.day.slice(5)));
    }
    if (p.median === null) return;
    const height = Math.max(2, top + plotH - y(p.median));
    svg.append(
      s(
        "rect",
        { x: x + slot * 0.15, y: top + plotH - height, width: slot * 0.7, height, class: `bar bar-${key}`, "data-day": p.day, "data-n": String(p.n) },
        s("title", {}, t("bar_title", { day: p.day, p: duration(p.median), max: duration(p.max), n: p.n })),
      ),
    );
  });
  if (!n) svg.append(s("text", { x: left + plotW / 2, y: top + plotH / 2, class: "none", "text-anchor": "middle" }, t("chart_none")));
  const table = h(
    "table",
    {},
    h("thead", {}, h("tr", {}, [t("day"), t("count"), t("median"), t("longest")].map((c) => h("th", { scope: "col", text: c })))),
    h(
      "tbody",
      {},
      points.filter((p) => p.n).map((p) => h("tr", {}, h("td", { text: p.day }), h("td", { text: p.n }), h("td", { text: duration(p.median) }), h("td", { text: duration(p.max) }))),
    ),
  );
  fill(
    figure,
    h("figcaption", {}, h("strong", { text: name }), n ? ` · ${n} · ${t("median")} ${duration(overall)}` : ""),
    svg,
    n ? h("details", {}, h("summary", { text: t("table") }), table) : null,
  );
}

function categoryChart(figure, W, rows) {
  const counts = new Map(CATEGORIES.map((c) => [c, 0]));
  let none = 0;
  for (const r of rows) {
    if (r.category && counts.has(r.category)) counts.set(r.category, counts.get(r.category) + 1);
    else none += 1;
  }
  const entries = [...counts.entries()].map(([c, n]) => [c, t(`cat_${c}`), n]);
  entries.push(["none", t("cat_none"), none]);
  const max = Math.max(1, ...entries.map((e) => e[2]));
  const rowH = 26;
  const left = S.lang === "en" ? 110 : 84;
  const H = entries.length * rowH + 8;
  const label = entries.map((e) => `${e[1]} ${e[2]}`).join(S.lang === "en" ? ", " : "，");
  const svg = s(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "chart categories", "data-chart": "categories", "aria-label": label },
    s("title", {}, label),
  );
  entries.forEach(([c, name, n], i) => {
    const yy = 4 + i * rowH;
    const width = ((W - left - 40) * n) / max;
    svg.append(
      s("text", { x: left - 8, y: yy + 17, class: "tick", "text-anchor": "end" }, name),
      s("rect", { x: left, y: yy + 4, width: Math.max(n ? 2 : 0, width), height: rowH - 8, class: `bar cat cat-${c}`, "data-category": c, "data-n": String(n) }),
      s("text", { x: left + width + 6, y: yy + 17, class: "count" }, String(n)),
    );
  });
  fill(figure, h("figcaption", {}, h("strong", { text: t("categories") })), svg);
}

/* ---------- routing and start ---------- */

function applyLanguage() {
  document.documentElement.lang = S.lang === "en" ? "en" : "zh-CN";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  const button = $("lang");
  button.textContent = S.lang === "en" ? "中文" : "English";
  button.lang = S.lang === "en" ? "zh-CN" : "en";
  $("nav").setAttribute("aria-label", S.lang === "en" ? "Main" : "主导航");
  updateTitle();
  if (S.me) setLive(document.documentElement.dataset.live || "wait");
}

function route() {
  if (!S.me) return;
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = hash.split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  for (const a of document.querySelectorAll("#nav a")) {
    const current = (name === "villages" || name === "village") ? a.getAttribute("href") === "#/villages" : a.getAttribute("href") === "#/board" && (name === "board" || !name);
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (name === "incident" && arg) renderIncidentPage(arg);
  else if (name === "village" || name === "villages") renderVillages(arg);
  else renderBoard();
}

async function start() {
  applyLanguage();
  $("lang").addEventListener("click", () => {
    S.lang = S.lang === "en" ? "zh" : "en";
    localStorage.setItem("dispatch.lang", S.lang);
    applyLanguage();
    if (S.me) {
      route();
      checkSetup();
    } else renderSignIn();
  });
  $("signout").addEventListener("click", () => signOut());
  document.addEventListener("click", unlockAudio, { capture: true });
  document.addEventListener("keydown", unlockAudio, { capture: true });
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => {
    clearTimeout(start.resize);
    start.resize = setTimeout(redrawOnResize, 150);
  });
  setInterval(() => {
    for (const card of S.cards.values()) tickCard(card.root);
    if (S.page) tickCard(S.page.root);
    updateCounts();
  }, 1000);
  if (!S.token) {
    renderSignIn();
    return;
  }
  try {
    await loadMe();
  } catch (exc) {
    signOut(exc.status === 401 ? t("err_401") : exc.message);
    return;
  }
  route();
}

start();
