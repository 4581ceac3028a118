"""Configuration: mailowl.toml, then MAILOWL_<SECTION>_<KEY> environment variables, then command-line
flags; all validated before anything starts, with errors that name the key and what is allowed."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from mailowl.tomlfile import load_toml

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.I)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 10**6, "mb": 10**6,
               "mi": 2**20, "mib": 2**20, "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(ValueError):
    pass


def parse_size(value: Any) -> int:
    """Bytes from 1048576, "1048576", "64MiB", "10MB" (decimal) or "512k"."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError("expected a size such as 10485760, 10MiB or 10MB")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


def parse_duration(value: Any) -> int:
    """Seconds from 3600, "90s", "15m", "12h", "30d" or "2w"."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.strip().isdigit():
        return int(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError("expected a duration such as 90s, 15m, 12h, 30d or 2w")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]
Duration = Annotated[int, BeforeValidator(parse_duration), Field(ge=0)]


def _seconds(value: Any) -> Any:
    """Seconds as a number (fractions allowed) or a duration such as "90s" or "2m"."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return parse_duration(value)
    return value


def split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError("expected HOST:PORT such as 127.0.0.1:8100")
    return host.strip("[]"), int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerConfig(_Section):
    listen: str = "127.0.0.1:8100"
    #: bearer token required on everything but /healthz; empty means no authentication
    token: str = ""
    max_sample_size: Size = 64 * 2**20
    #: a v1 report request for a pending job waits this many seconds for the verdict before its 404
    report_wait: Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=30)] = 0.25
    data_dir: Path = Path("mailowl-data")
    #: seconds a connection may take to send a request's headers, or pause within its body, and may sit
    #: idle between requests, before the server closes it
    read_timeout: Annotated[int, BeforeValidator(parse_duration), Field(ge=1, le=3600)] = 30

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value


class StoreConfig(_Section):
    #: SQLAlchemy URL; empty means SQLite in data_dir. mysql+asyncmy://, postgresql+asyncpg:// also work.
    url: str = ""
    #: cached verdicts older than this are not reused by the `known` rule (0 = no limit)
    max_age: Duration = 30 * 86400
    #: how many recent jobs (and verdict-cache identities) stay in memory for fast report lookups
    memory_jobs: int = Field(default=10_000, ge=100)
    #: `db purge` refuses to delete younger jobs; the server answers jobs younger than half of it from memory
    purge_min_age: Duration = 3600
    #: SQLite in WAL mode: "normal" survives a killed process, "full" also a power cut (an fsync per commit)
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    #: MariaDB / PostgreSQL (several instances may share the database): seconds without a heartbeat after
    #: which an instance's work is taken over by another (it heartbeats every fifth of this)
    lease: Annotated[int, BeforeValidator(parse_duration), Field(ge=2, le=3600)] = 15

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not re.match(r"^(sqlite\+aiosqlite|mysql\+asyncmy|mysql\+aiomysql|mariadb\+asyncmy|"
                                  r"postgresql\+asyncpg)://", value):
            raise ValueError("expected an async SQLAlchemy URL: sqlite+aiosqlite:///PATH, "
                             "mysql+asyncmy://USER@HOST/DB or postgresql+asyncpg://USER@HOST/DB")
        return value


class QueueConfig(_Section):
    #: jobs waiting for a worker; beyond this the API answers 503 with Retry-After
    size: int = Field(default=10_000, ge=1)
    #: worker threads running analyses (libmagic, oletools, archives, YARA, pefile) at once
    workers: int = Field(default=2, ge=1, le=64)


class AnalysisConfig(_Section):
    #: ruleset file: native TOML or a PeekabooAV ruleset.conf; empty means the built-in ruleset
    ruleset: str = ""
    #: one sample's whole analysis (archive members included); past it the verdict is failed and the
    #: worker process is killed and replaced
    timeout: Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=86400)] = 60.0
    #: memory a worker process may use beyond its size when idle (its address-space limit)
    max_memory: Size = 256 * 2**20


class ClamavConfig(_Section):
    #: clamd's socket: a unix socket path ("/run/clamav/clamd.ctl") or HOST:PORT; empty: no ClamAV
    socket: str = ""
    #: seconds one scan may take (connecting, streaming the sample and clamd's answer)
    timeout: Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=3600)] = 30.0

    @field_validator("socket")
    @classmethod
    def _socket(cls, value: str) -> str:
        if value:
            from mailowl.analysis.clamav import parse_address

            parse_address(value)
        return value


class CortexConfig(_Section):
    """PeekabooAV's [cortex] of analyzers.conf (``serve --analyzers FILE`` reads that file unchanged)."""

    #: Cortex's REST API base, e.g. http://127.0.0.1:9001; empty: no Cortex (cortexreport is refused)
    url: str = ""
    #: Traffic Light Protocol of submissions
    tlp: Literal["white", "green", "amber", "red"] = "amber"
    #: sent as Authorization: Bearer <api_token>
    api_token: str = ""
    #: seconds between status checks when Cortex cannot wait for a job itself (no waitreport), and
    #: before retrying after Cortex could not be reached
    poll_interval: Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=3600)] = 5.0
    #: upload under the declared file name; else as <sha256>.<extension>
    submit_original_filename: bool = True
    #: seconds a job is waited for before the sample's verdict is failed
    maximum_job_age: Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=7 * 86400)] = 900.0
    #: seconds one waitreport request may block in Cortex; 0 polls every poll_interval instead
    wait: Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=600)] = 60.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http:// or https:// URL such as http://127.0.0.1:9001")
        return value


class MilterConfig(_Section):
    #: HOST:PORT for Postfix's smtpd_milters = inet:HOST:PORT; empty turns the milter off
    listen: str = "127.0.0.1:8101"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            split_listen(value)
        return value


class SmtpConfig(_Section):
    #: HOST:PORT for the SMTP content filter (Postfix content_filter, Exim, OpenSMTPD); empty = off
    listen: str = ""
    #: where accepted mail is re-injected
    next_hop: str = "127.0.0.1:10026"

    @field_validator("listen", "next_hop")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            split_listen(value)
        return value


Action = Literal["reject", "quarantine", "discard"]
Fallback = Literal["tempfail", "reject", "accept"]


class MailConfig(_Section):
    #: seconds to wait for verdicts before answering 451 4.7.1 "try again later"
    wait: Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=60)] = 2.0
    on_bad: Action = "reject"
    on_failed: Fallback = "tempfail"
    on_unparsable: Fallback = "tempfail"
    reject_text: str = "Message rejected: it carries a malicious attachment"
    tempfail_text: str = "Attachment analysis in progress, try again later"
    include_bodies: bool = False
    max_parts: int = Field(default=1000, ge=1)
    max_depth: int = Field(default=10, ge=1, le=100)
    #: all header blocks of a message together (the message's own and its parts')
    max_header_size: Size = 16 * 2**20
    header: str = "X-Mailowl-Result"


class LogConfig(_Section):
    #: "" (off), "stdout", "file:/path", "syslog:unix:/dev/log", "syslog:udp:HOST:PORT", "syslog:tcp:HOST:PORT"
    target: str = ""
    format: Literal["klms", "ecs"] = "klms"
    syslog_format: Literal["rfc3164", "rfc5424"] = "rfc3164"
    #: lines waiting for the writer thread; beyond this they are dropped (and counted), never waited for
    queue_size: int = Field(default=10_000, ge=1, le=10_000_000)
    #: seconds a connect or send to a syslog target may take before the writer reconnects
    send_timeout: Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=300)] = 5.0

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if value in ("", "stdout") or (value.startswith("file:") and len(value) > 5):
            return value
        if value.startswith("syslog:unix:") and len(value) > 12:
            return value
        if value.startswith(("syslog:udp:", "syslog:tcp:")):
            split_listen(value[11:])
            return value
        raise ValueError('expected "", "stdout", "file:/path", "syslog:unix:/dev/log", "syslog:udp:HOST:PORT" '
                         'or "syslog:tcp:HOST:PORT"')


class Config(_Section):
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    milter: MilterConfig = MilterConfig()
    smtp: SmtpConfig = SmtpConfig()
    mail: MailConfig = MailConfig()
    store: StoreConfig = StoreConfig()
    queue: QueueConfig = QueueConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    clamav: ClamavConfig = ClamavConfig()
    cortex: CortexConfig = CortexConfig()

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite+aiosqlite:///{self.server.data_dir / 'mailowl.db'}"

    @property
    def ruleset_path(self) -> Path | None:
        return Path(self.analysis.ruleset) if self.analysis.ruleset else None


def _sections() -> dict[str, type[BaseModel]]:
    return {name: field.annotation for name, field in Config.model_fields.items()}  # type: ignore[misc]


#: the variables Kubernetes sets for a Service (e.g. one named "mailowl" gives MAILOWL_SERVICE_HOST and
#: MAILOWL_PORT_8100_TCP_ADDR); none of them is a setting
_SERVICE_VARIABLE = re.compile(r"^MAILOWL_(?:\w+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_\w+)?|PORT_\d+_(?:TCP|UDP|SCTP)"
                               r"_(?:PROTO|PORT|ADDR))$")
#: ... and these, whose values are URLs such as tcp://10.0.0.7:8100 (MAILOWL_SERVER_PORT=8100 stays a typo)
_SERVICE_URL = re.compile(r"^MAILOWL_(?:\w+_)?PORT(?:_\d+_(?:TCP|UDP|SCTP))?$")


def _service_link(name: str, value: str) -> bool:
    return bool(_SERVICE_VARIABLE.match(name)
                or (_SERVICE_URL.match(name) and re.match(r"(tcp|udp|sctp)://", value)))


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    sections = _sections()
    for name, value in environ.items():
        if not name.startswith("MAILOWL_") or name == "MAILOWL_CONFIG":
            continue
        section, _, key = name[len("MAILOWL_"):].lower().partition("_")
        if section not in sections or key not in sections[section].model_fields:
            if _service_link(name, value):
                continue  # Kubernetes describes a Service named mailowl… this way in every pod beside it
            known = ", ".join(f"MAILOWL_{s.upper()}_{k.upper()}" for s, m in sections.items() for k in m.model_fields)
            raise ConfigError(f"environment variable {name}: no such setting (known: {known}, MAILOWL_CONFIG)")
        out.setdefault(section, {})[key] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"[{section}] must be a table")
        target.update(values)
    return merged


def _explain(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else loc[0] if loc else "?"
        if err["type"] == "extra_forbidden":
            if len(loc) == 1:
                allowed = ", ".join(_sections())
            else:
                allowed = ", ".join(_sections().get(loc[0], Config).model_fields)
            lines.append(f"{origin}: {where}: unknown setting (allowed: {allowed})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{origin}: {where}: {msg} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    if path is None and environ.get("MAILOWL_CONFIG"):
        path = Path(environ["MAILOWL_CONFIG"])
    data: dict[str, Any] = {}
    origin = "configuration"
    if path is not None:
        origin = str(path)
        data = load_toml(path, ConfigError)
    data = _merge(data, env_overrides(environ))
    data = _merge(data, overrides or {})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origin)) from None
