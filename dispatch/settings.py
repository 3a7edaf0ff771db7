"""Settings: command-line flags over `DISPATCH_*` environment variables over defaults.

Invariants: everything is validated at start with an error that names the setting; secrets
come from the environment or a file (`DISPATCH_WEBHOOK_SECRET_FILE`, `DISPATCH_NATS_PASSWORD_FILE`,
...), never from flags, and are never logged (nor in a repr).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dispatch.channels.http import url_problem
from dispatch.channels.routing import ChannelConfig, ChannelConfigError, load_channel_config
from dispatch.domain.directory import Deadlines
from dispatch.domain.incident import DEFAULT_QUORUM, parse_quorum
from dispatch.domain.phone import InvalidPhone, normalize
from dispatch.domain.timezones import DEFAULT_TIME_ZONE, valid_time_zone
from dispatch.events.model import Person
from dispatch.store.connect import NatsAuth


class SettingsError(ValueError):
    pass


READ_MODELS = ("here", "elsewhere")
"""Where the SQL read models are kept: in this process, or by `dispatch projections run` beside it."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"DISPATCH_{name}")
    return value if value not in (None, "") else default


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@dataclass
class Settings:
    data_dir: Path = Path("./dispatch-data")
    http: str = "127.0.0.1:8080"
    nats_urls: list[str] = field(default_factory=list)
    database_url: str | None = None
    duty_desk: str | None = None
    duty_desk_name: str = "派出所值班室"
    duress_number: str | None = None
    duress_keyword: str | None = None
    webhook_urls: list[str] = field(default_factory=list)
    webhook_secret: str | None = field(default=None, repr=False)
    public_url: str | None = None
    quorum: str = DEFAULT_QUORUM
    region: str = "CN"
    stream_replicas: int = 1
    log_format: str = "auto"
    log_level: str = "info"
    delivery_max_attempts: int = 5
    delivery_backoff_base: float = 2.0
    delivery_backoff_max: float = 60.0
    ack_deadline_s: float = 60.0
    escalate_after_s: float = 300.0
    arrival_deadline_s: float = 1200.0
    command_centre: str | None = None
    command_centre_name: str = "县公安局指挥中心"
    channels_file: Path | None = None
    nats_restart_delay: float = 1.0
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_token: str | None = field(default=None, repr=False)
    nats_nkey_seed: str | None = field(default=None, repr=False)
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    rate_limit: float = 50.0
    rate_burst: float = 500.0
    time_zone: str = DEFAULT_TIME_ZONE
    read_models: str = "here"
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_max_connections: int = 1000
    http_keepalive_timeout: float = 75.0
    audit_retention_days: float = 365.0
    retention_days: float = 0.0
    simulate_phones: bool = False
    broadcast_rate: float = 200.0
    broadcast_connections: int = 8

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        settings = cls(
            data_dir=Path(_env("DATA_DIR", "./dispatch-data") or "./dispatch-data"),
            http=_env("HTTP", "127.0.0.1:8080") or "127.0.0.1:8080",
            nats_urls=_split(_env("NATS_URL")),
            database_url=_env("DATABASE_URL"),
            duty_desk=_env("DUTY_DESK"),
            duty_desk_name=_env("DUTY_DESK_NAME", "派出所值班室") or "派出所值班室",
            duress_number=_env("DURESS_NUMBER"),
            duress_keyword=_env("DURESS_KEYWORD"),
            webhook_urls=_split(_env("WEBHOOK_URLS")),
            webhook_secret=_secret("WEBHOOK_SECRET"),
            public_url=_env("PUBLIC_URL"),
            quorum=_env("COVER_QUORUM", DEFAULT_QUORUM) or DEFAULT_QUORUM,
            region=_env("REGION", "CN") or "CN",
            stream_replicas=_int("STREAM_REPLICAS", 1),
            log_format=_env("LOG_FORMAT", "auto") or "auto",
            log_level=_env("LOG_LEVEL", "info") or "info",
            delivery_max_attempts=_int("DELIVERY_MAX_ATTEMPTS", 5),
            delivery_backoff_base=_float("DELIVERY_BACKOFF_BASE", 2.0),
            delivery_backoff_max=_float("DELIVERY_BACKOFF_MAX", 60.0),
            nats_restart_delay=_float("NATS_RESTART_DELAY", 1.0),
            ack_deadline_s=_float("ACK_DEADLINE", 60.0),
            escalate_after_s=_float("ESCALATE_AFTER", 300.0),
            arrival_deadline_s=_float("ARRIVAL_DEADLINE", 1200.0),
            command_centre=_env("COMMAND_CENTRE"),
            command_centre_name=_env("COMMAND_CENTRE_NAME", "县公安局指挥中心") or "县公安局指挥中心",
            channels_file=Path(cf) if (cf := _env("CHANNELS_FILE")) else None,
            nats_user=_env("NATS_USER"),
            nats_password=_secret("NATS_PASSWORD"),
            nats_token=_secret("NATS_TOKEN"),
            nats_nkey_seed=_secret("NATS_NKEY_SEED"),
            nats_creds=_path("NATS_CREDS"),
            nats_tls_ca=_path("NATS_TLS_CA"),
            nats_tls_cert=_path("NATS_TLS_CERT"),
            nats_tls_key=_path("NATS_TLS_KEY"),
            rate_limit=_float("RATE_LIMIT", 50.0),
            rate_burst=_float("RATE_BURST", 500.0),
            time_zone=_env("TIME_ZONE", DEFAULT_TIME_ZONE) or DEFAULT_TIME_ZONE,
            read_models=_env("READ_MODELS", "here") or "here",
            http_header_timeout=_float("HTTP_HEADER_TIMEOUT", 10.0),
            http_body_timeout=_float("HTTP_BODY_TIMEOUT", 30.0),
            http_max_connections=_int("HTTP_MAX_CONNECTIONS", 1000),
            http_keepalive_timeout=_float("HTTP_KEEPALIVE_TIMEOUT", 75.0),
            audit_retention_days=_float("AUDIT_RETENTION_DAYS", 365.0),
            retention_days=_float("RETENTION_DAYS", 0.0),
            simulate_phones=_bool("SIMULATE_PHONES"),
            broadcast_rate=_float("BROADCAST_RATE", 200.0),
            broadcast_connections=_int("BROADCAST_CONNECTIONS", 8),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.read_models not in READ_MODELS:
            raise SettingsError(
                f"DISPATCH_READ_MODELS must be one of {', '.join(READ_MODELS)}, got {self.read_models!r}"
            )
        host, _, port = self.http.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"--http / DISPATCH_HTTP must be HOST:PORT, got {self.http!r}")
        for url in self.nats_urls:
            if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise SettingsError(f"--nats-url / DISPATCH_NATS_URL: {url!r} is not a nats:// URL")
        self._validate_nats_auth()
        if self.database_url and not self.database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise SettingsError("--database-url / DISPATCH_DATABASE_URL must be sqlite:///PATH or postgresql://...")
        if self.duty_desk:
            try:
                self.duty_desk = normalize(self.duty_desk, self.region)
            except InvalidPhone:
                raise SettingsError(f"DISPATCH_DUTY_DESK: {self.duty_desk!r} is not a valid phone number") from None
        if self.duress_number is not None and not self.duress_number.strip().lstrip("+").isdigit():
            raise SettingsError(f"DISPATCH_DURESS_NUMBER: {self.duress_number!r} is not a service number (digits)")
        if self.duress_keyword is not None and not self.duress_keyword.strip():
            raise SettingsError("DISPATCH_DURESS_KEYWORD is set but empty")
        for n, url in enumerate(self.webhook_urls, start=1):
            if (problem := url_problem(url)) is not None:
                raise SettingsError(f"DISPATCH_WEBHOOK_URLS: URL {n} {problem}")
        if self.webhook_urls and not self.webhook_secret:
            raise SettingsError(
                "DISPATCH_WEBHOOK_URLS is set but DISPATCH_WEBHOOK_SECRET (or _FILE) is not: webhooks must be signed"
            )
        try:
            parse_quorum(self.quorum)
        except ValueError as exc:
            raise SettingsError(f"DISPATCH_COVER_QUORUM: {exc}") from None
        if self.stream_replicas not in (1, 3, 5):
            raise SettingsError("DISPATCH_STREAM_REPLICAS must be 1, 3 or 5")
        if self.log_format not in ("auto", "console", "json"):
            raise SettingsError("DISPATCH_LOG_FORMAT must be auto, console or json")
        if not (self.http_header_timeout > 0 and self.http_body_timeout > 0):
            raise SettingsError("DISPATCH_HTTP_HEADER_TIMEOUT and DISPATCH_HTTP_BODY_TIMEOUT must be positive seconds")
        if not self.http_keepalive_timeout > 0:
            raise SettingsError("DISPATCH_HTTP_KEEPALIVE_TIMEOUT must be positive seconds")
        if not 0 <= self.retention_days <= 36_500:
            raise SettingsError("DISPATCH_RETENTION_DAYS must be between 0 (keep everything) and 36500 days")
        if not 1 <= self.audit_retention_days <= 36_500:
            raise SettingsError("DISPATCH_AUDIT_RETENTION_DAYS must be between 1 and 36500 days")
        if self.http_max_connections < 1:
            raise SettingsError("DISPATCH_HTTP_MAX_CONNECTIONS must be at least 1")
        if self.rate_limit < 0 or self.rate_burst < 1:
            raise SettingsError("DISPATCH_RATE_LIMIT must be 0 (off) or more, DISPATCH_RATE_BURST at least 1")
        if self.broadcast_rate <= 0 or self.broadcast_connections < 1:
            raise SettingsError(
                "DISPATCH_BROADCAST_RATE must be positive and DISPATCH_BROADCAST_CONNECTIONS at least 1"
            )
        if self.delivery_max_attempts < 1:
            raise SettingsError("DISPATCH_DELIVERY_MAX_ATTEMPTS must be at least 1")
        if not 0 < self.ack_deadline_s <= self.escalate_after_s:
            raise SettingsError("DISPATCH_ACK_DEADLINE must be positive and at most DISPATCH_ESCALATE_AFTER")
        if self.arrival_deadline_s <= 0:
            raise SettingsError("DISPATCH_ARRIVAL_DEADLINE must be positive")
        if self.command_centre and not self.command_centre.startswith(("http://", "https://")):
            try:
                self.command_centre = normalize(self.command_centre, self.region)
            except InvalidPhone:
                raise SettingsError(
                    f"DISPATCH_COMMAND_CENTRE: {self.command_centre!r} is neither a phone number nor an http(s) URL"
                ) from None
        if not valid_time_zone(self.time_zone):
            raise SettingsError(f"DISPATCH_TIME_ZONE: {self.time_zone!r} is not an IANA time zone (e.g. Asia/Shanghai)")
        if (centre := self.command_centre_url) is not None and (problem := url_problem(centre)) is not None:
            raise SettingsError(f"DISPATCH_COMMAND_CENTRE: the URL {problem}")
        self.channel_config()
        if self.command_centre_url and not self.webhook_secret:
            raise SettingsError(
                "DISPATCH_COMMAND_CENTRE is a URL: set DISPATCH_WEBHOOK_SECRET so its alerts are signed"
            )

    def _validate_nats_auth(self) -> None:
        auth = self.nats_auth()
        given = auth.mechanisms() + (["TLS"] if auth.tls else [])
        if self.embedded_nats and given:
            raise SettingsError(
                f"NATS {' and '.join(given)} set but no DISPATCH_NATS_URL: the embedded server makes its own "
                "credentials; set --nats-url / DISPATCH_NATS_URL to use a server of yours"
            )
        if len(auth.mechanisms()) > 1:
            raise SettingsError(f"NATS: use one of {', '.join(auth.mechanisms())}, not several")
        if self.nats_password and not self.nats_user:
            raise SettingsError("DISPATCH_NATS_PASSWORD is set but DISPATCH_NATS_USER is not")
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise SettingsError("DISPATCH_NATS_TLS_CERT and DISPATCH_NATS_TLS_KEY go together (a client certificate)")
        for name, path in (
            ("DISPATCH_NATS_CREDS", self.nats_creds),
            ("DISPATCH_NATS_TLS_CA", self.nats_tls_ca),
            ("DISPATCH_NATS_TLS_CERT", self.nats_tls_cert),
            ("DISPATCH_NATS_TLS_KEY", self.nats_tls_key),
        ):
            if path is not None and not path.is_file():
                raise SettingsError(f"{name}: {path} is not a readable file")
        try:
            auth.ssl_context()
        except (OSError, ValueError) as exc:
            raise SettingsError(f"NATS TLS settings: {exc}") from None

    def nats_auth(self) -> NatsAuth:
        """Credentials and TLS for a NATS given by URL (the embedded server has its own)."""
        return NatsAuth(
            user=self.nats_user,
            password=self.nats_password,
            token=self.nats_token,
            nkey_seed=self.nats_nkey_seed,
            creds_file=self.nats_creds,
            tls_ca=self.nats_tls_ca,
            tls_cert=self.nats_tls_cert,
            tls_key=self.nats_tls_key,
        )

    @property
    def embedded_nats(self) -> bool:
        return not self.nats_urls

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'dispatch.db').resolve()}"

    @property
    def http_host(self) -> str:
        return self.http.rpartition(":")[0]

    @property
    def http_port(self) -> int:
        return int(self.http.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.http_host if self.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.http_port}"

    def channel_config(self) -> ChannelConfig:
        """The channel routing (DISPATCH_CHANNELS_FILE), checked; without a file: every channel, every role."""
        if self.channels_file is None:
            return ChannelConfig()
        try:
            return load_channel_config(self.channels_file)
        except ChannelConfigError as exc:
            raise SettingsError(str(exc)) from None

    @property
    def command_centre_url(self) -> str | None:
        cc = self.command_centre
        return cc if cc and cc.startswith(("http://", "https://")) else None

    def command_centre_person(self) -> Person | None:
        """Tier 2 is rung to this person: its number, or (a URL) a placeholder the webhook channel
        routes to that URL alone."""
        if not self.command_centre:
            return None
        phone = "command-centre" if self.command_centre_url else self.command_centre
        return Person(phone=phone, name=self.command_centre_name, role="command_centre")

    def deadlines(self) -> Deadlines:
        return Deadlines(ack_s=self.ack_deadline_s, escalate_s=self.escalate_after_s, arrival_s=self.arrival_deadline_s)

    def fallback_duty(self) -> tuple[Person, ...]:
        if not self.duty_desk:
            return ()
        return (Person(phone=self.duty_desk, name=self.duty_desk_name, role="duty"),)


def _secret(name: str) -> str | None:
    """A secret from DISPATCH_<name>, or read from the file DISPATCH_<name>_FILE names."""
    value = _env(name)
    file = _env(f"{name}_FILE")
    if value is None and file:
        try:
            value = Path(file).read_text().strip() or None
        except OSError as exc:
            raise SettingsError(f"DISPATCH_{name}_FILE: cannot read {file}: {exc.strerror}") from None
    return value


def _path(name: str) -> Path | None:
    value = _env(name)
    return Path(value) if value else None


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"DISPATCH_{name} must be a whole number, got {raw!r}") from None


def _bool(name: str) -> bool:
    raw = (_env(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"DISPATCH_{name} must be 1 or 0 (true or false), got {raw!r}")


def _float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"DISPATCH_{name} must be a number, got {raw!r}") from None


SIP_PROMPT = "已通知您的联防小组，请保持电话畅通。如您已安全，请按0取消报警。"
SIP_FALLBACK_PROMPT = "报警系统暂时无法接通，请立即拨打110报警。"


@dataclass
class SipSettings:
    """`dispatch sip`: the telephony bridge (docs/telephony.md), from `DISPATCH_SIP_*`."""

    http: str = "127.0.0.1:9100"
    dispatch_url: str = "http://127.0.0.1:8080"
    token: str | None = field(default=None, repr=False)
    gateway_secret: str | None = field(default=None, repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    proxy: str = "127.0.0.1:5060"
    domain: str | None = None
    user: str = "6995"
    auth_user: str | None = None
    password: str | None = field(default=None, repr=False)
    register: bool = True
    listen: str = "0.0.0.0:5080"
    control_port: int = 0
    rtp_ports: str = "10000-20000"
    codecs: list[str] = field(default_factory=lambda: ["PCMA", "PCMU"])
    state_dir: Path = Path("./dispatch-sip")
    prompt: str = SIP_PROMPT
    fallback_prompt: str = SIP_FALLBACK_PROMPT
    answer_within_s: float = 1.0
    dispatch_deadline_s: float = 20.0
    repeats: int = 3
    dial_rules: str = "+8610=010,+861=1,+86=0,+=00"
    max_legs: int = 64
    spare_lines: int = 16
    speech_rate: int = 150
    log_format: str = "auto"
    log_level: str = "info"

    @classmethod
    def from_env(cls, **overrides: object) -> SipSettings:
        settings = cls(
            http=_env("SIP_HTTP", "127.0.0.1:9100") or "127.0.0.1:9100",
            dispatch_url=_env("SIP_DISPATCH_URL") or _env("SERVER") or "http://127.0.0.1:8080",
            token=_secret("SIP_TOKEN"),
            gateway_secret=_secret("GATEWAY_SECRET"),
            signing_secret=_secret("GATEWAY_SIGNING_SECRET"),
            proxy=_env("SIP_PROXY", "127.0.0.1:5060") or "127.0.0.1:5060",
            domain=_env("SIP_DOMAIN"),
            user=_env("SIP_USER", "6995") or "6995",
            auth_user=_env("SIP_AUTH_USER"),
            password=_secret("SIP_PASSWORD"),
            register=(_env("SIP_REGISTER", "yes") or "yes").lower() in ("1", "yes", "true", "on"),
            listen=_env("SIP_LISTEN", "0.0.0.0:5080") or "0.0.0.0:5080",
            control_port=_int("SIP_CONTROL_PORT", 0),
            rtp_ports=_env("SIP_RTP_PORTS", "10000-20000") or "10000-20000",
            codecs=[c.upper() for c in _split(_env("SIP_CODECS", "PCMA,PCMU"))],
            state_dir=Path(_env("SIP_STATE_DIR", "./dispatch-sip") or "./dispatch-sip"),
            prompt=_env("SIP_PROMPT", SIP_PROMPT) or SIP_PROMPT,
            fallback_prompt=_env("SIP_FALLBACK_PROMPT", SIP_FALLBACK_PROMPT) or SIP_FALLBACK_PROMPT,
            answer_within_s=_float("SIP_ANSWER_WITHIN", 1.0),
            dispatch_deadline_s=_float("SIP_DISPATCH_DEADLINE", 20.0),
            repeats=_int("SIP_REPEATS", 3),
            dial_rules=_env("SIP_DIAL_RULES", "+8610=010,+861=1,+86=0,+=00") or "",
            max_legs=_int("SIP_MAX_LEGS", 64),
            spare_lines=_int("SIP_SPARE_LINES", 16),
            speech_rate=_int("SIP_SPEECH_RATE", 150),
            log_format=_env("LOG_FORMAT", "auto") or "auto",
            log_level=_env("LOG_LEVEL", "info") or "info",
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        settings.validate()
        return settings

    def validate(self) -> None:
        from dispatch.domain.dialing import DialRules, DialRulesError

        for name, value in (("DISPATCH_SIP_HTTP", self.http), ("DISPATCH_SIP_LISTEN", self.listen)):
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingsError(f"{name} must be HOST:PORT, got {value!r}")
        host, _, port = self.proxy.rpartition(":") if ":" in self.proxy else (self.proxy, "", "5060")
        if not (host or self.proxy) or (port and not port.isdigit()):
            raise SettingsError(f"DISPATCH_SIP_PROXY must be HOST or HOST:PORT, got {self.proxy!r}")
        if not self.dispatch_url.startswith(("http://", "https://")):
            raise SettingsError(f"DISPATCH_SIP_DISPATCH_URL must be an http(s) URL, got {self.dispatch_url!r}")
        if not self.token:
            raise SettingsError(
                "DISPATCH_SIP_TOKEN (or _FILE) is required: a gateway token (dispatch tokens create --role gateway)"
            )
        if not self.gateway_secret:
            raise SettingsError(
                "DISPATCH_GATEWAY_SECRET (or _FILE) is required: the secret dispatch signs its requests with"
            )
        if not self.user or not all(c.isalnum() or c in "+-_." for c in self.user):
            raise SettingsError(f"DISPATCH_SIP_USER must be a SIP user (the service number), got {self.user!r}")
        lo, _, hi = self.rtp_ports.partition("-")
        if not (lo.isdigit() and hi.isdigit() and 0 < int(lo) < int(hi) < 65536):
            raise SettingsError(f"DISPATCH_SIP_RTP_PORTS must be LOW-HIGH, got {self.rtp_ports!r}")
        unknown = [c for c in self.codecs if c not in ("PCMA", "PCMU")]
        if unknown or not self.codecs:
            raise SettingsError(f"DISPATCH_SIP_CODECS must list PCMA and/or PCMU, got {','.join(self.codecs)!r}")
        if not 0 < self.answer_within_s <= 1.5:
            raise SettingsError("DISPATCH_SIP_ANSWER_WITHIN must be more than 0 and at most 1.5 seconds")
        if self.dispatch_deadline_s < self.answer_within_s:
            raise SettingsError("DISPATCH_SIP_DISPATCH_DEADLINE must be at least DISPATCH_SIP_ANSWER_WITHIN")
        if not 1 <= self.repeats <= 10:
            raise SettingsError("DISPATCH_SIP_REPEATS must be 1 to 10")
        if not 80 <= self.speech_rate <= 450:
            raise SettingsError("DISPATCH_SIP_SPEECH_RATE must be 80 to 450 (words a minute)")
        if not 0 <= self.spare_lines <= self.max_legs:
            raise SettingsError("DISPATCH_SIP_SPARE_LINES must be 0 to DISPATCH_SIP_MAX_LEGS")
        if not 1 <= self.max_legs <= 1000:
            raise SettingsError("DISPATCH_SIP_MAX_LEGS must be 1 to 1000")
        if not self.prompt.strip() or not self.fallback_prompt.strip():
            raise SettingsError("DISPATCH_SIP_PROMPT and DISPATCH_SIP_FALLBACK_PROMPT must not be empty")
        try:
            DialRules.parse(self.dial_rules)
        except DialRulesError as exc:
            raise SettingsError(f"DISPATCH_SIP_DIAL_RULES: {exc}") from None

    @property
    def sip_domain(self) -> str:
        return self.domain or self.proxy

    @property
    def http_host(self) -> str:
        return self.http.rpartition(":")[0]

    @property
    def http_port(self) -> int:
        return int(self.http.rpartition(":")[2])
