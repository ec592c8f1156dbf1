"""Logging setup: one line per record on stderr, as logfmt or JSON, and secret redaction.

Every record becomes exactly one line, so log shippers never split a traceback across
records::

    time=2024-05-01T12:00:00.123Z level=info logger=exporter.app msg="listening" metrics=http://127.0.0.1:9945
    {"time": "2024-05-01T12:00:00.123Z", "level": "info", "logger": "exporter.app", "msg": "listening", ...}

Structured fields are passed with ``extra=``: ``log.info("listening", extra={"metrics": url})``.
Anything that may hold a credential goes through :func:`redact` before it reaches a logger.

**Rate limit.** Outside traffic can make aiohttp and asyncio log: aiohttp's ``aiohttp.server``,
``aiohttp.access`` and ``aiohttp.web`` for malformed requests and failing handlers, asyncio's
``asyncio`` logger once per failed ``accept()`` (EMFILE, "socket.accept() out of system resource").
Those loggers go through a :class:`RateLimitFilter` on the handler: the first record of a kind
(logger, level, the message's first line, the exception's class) is written, then at most one per
:data:`RATE_LIMIT_INTERVAL` seconds, carrying ``suppressed=N`` for the records it stood for. The
exporter's own loggers rate-limit where a client can trigger them (``RejectionLog`` in
:mod:`exporter.webhooks.intake`), so they are not filtered here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()) | {
    "message",
    "asctime",
    "taskName",
}

_REDACTED_PREFIX_MAX = 4


def redact(value: str | None) -> str:
    """Show at most the first 4 characters of a key or secret, followed by "…".

    Short values show proportionally less (a quarter of their length), so a redacted short
    secret never reveals most of itself.
    """
    if not value:
        return "…"
    shown = min(_REDACTED_PREFIX_MAX, len(value) // 4)
    return value[:shown] + "…"


def _timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds, the form Prometheus' own components log."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's standard keys followed by its ``extra=`` fields, exception last."""
    fields: dict[str, Any] = {
        "time": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
            # An extra field never replaces a standard key: a parser relies on those.
            fields[key if key not in fields else f"extra_{key}"] = value
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        fields["exc"] = record.exc_text
    if record.stack_info:
        fields["stack"] = record.stack_info
    return fields


def _logfmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if text and not any(c in text for c in ' ="\\\n\r\t') and text.isprintable():
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _logfmt_key(key: str) -> str:
    # A key with a space or "=" would make the line ambiguous to parsers.
    return "".join(c if c.isprintable() and c not in ' ="' else "_" for c in key) or "_"


class LogfmtFormatter(logging.Formatter):
    """``time=… level=… logger=… msg="…" key=value`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{_logfmt_key(key)}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the same keys as the logfmt form."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False)


#: Seconds between two records of the same kind from a rate-limited logger.
RATE_LIMIT_INTERVAL = 10.0
#: Loggers that outside traffic can make write (and their children).
RATE_LIMITED_LOGGERS = ("aiohttp", "asyncio")
#: Kinds remembered at once; past it the oldest is forgotten (kinds come from message templates, few).
_RATE_LIMIT_KINDS = 1024


class RateLimitFilter(logging.Filter):
    """Lets the first record of a kind through, then at most one per ``interval`` with a suppressed count.

    Applies to records of ``loggers`` (and their children) only; see the module docstring.
    """

    def __init__(
        self,
        loggers: tuple[str, ...] = RATE_LIMITED_LOGGERS,
        *,
        interval: float = RATE_LIMIT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._loggers = loggers
        self._interval = interval
        self._clock = clock
        # kind -> (time the next record may pass, records suppressed since the last one passed)
        self._kinds: dict[tuple[str, int, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not any(name == prefix or name.startswith(prefix + ".") for prefix in self._loggers):
            return True
        # The template, not the formatted message: "Error handling request from %s" is one kind
        # whatever the client's address.
        template = str(record.msg).split("\n", 1)[0]
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        kind = (name, record.levelno, template, exc_type)
        now = self._clock()
        next_time, suppressed = self._kinds.get(kind, (float("-inf"), 0))
        if now < next_time:
            self._kinds[kind] = (next_time, suppressed + 1)
            return False
        self._kinds.pop(kind, None)
        if len(self._kinds) >= _RATE_LIMIT_KINDS:
            del self._kinds[next(iter(self._kinds))]
        self._kinds[kind] = (now + self._interval, 0)
        if suppressed:
            record.suppressed = suppressed
        return True


def setup_logging(level: str = "info", fmt: str = "logfmt", stream: IO[str] | None = None) -> None:
    """Send every record at ``level`` or above to ``stream`` (stderr) in ``fmt``.

    Replaces the root logger's handlers, so calling it twice (tests, the demo) does not
    duplicate lines.
    """
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LOG_LEVELS)}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(LogfmtFormatter() if fmt == "logfmt" else JsonFormatter())
    handler.addFilter(RateLimitFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
