"""Logging: one parseable line per record in logfmt or JSON, and secret redaction."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.core.logs import redact, setup_logging
from tests.helpers import parse_logfmt


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """Restore the root logger's handlers and level after a test reconfigures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_logfmt_line_has_standard_keys_then_extra_fields(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("info", "logfmt", stream=stream)
    logging.getLogger("exporter.test").info(
        "listening now", extra={"metrics": "http://127.0.0.1:1", "accounts": 2, "zerohash": False}
    )
    [line] = _lines(stream)
    fields = parse_logfmt(line)
    assert list(fields)[:4] == ["time", "level", "logger", "msg"]
    assert fields["level"] == "info"
    assert fields["logger"] == "exporter.test"
    assert fields["msg"] == "listening now"
    assert fields["metrics"] == "http://127.0.0.1:1"
    assert fields["accounts"] == "2"
    assert fields["zerohash"] == "false"
    assert fields["time"].endswith("Z") and "T" in fields["time"]


def test_logfmt_quotes_and_escapes_so_a_record_stays_on_one_line(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("info", "logfmt", stream=stream)
    tricky = 'a "quoted" value\nwith a newline and a \\ backslash = sign'
    logging.getLogger("t").warning(tricky, extra={"field": tricky, "empty": ""})
    [line] = _lines(stream)
    fields = parse_logfmt(line)
    assert fields["msg"] == tricky
    assert fields["field"] == tricky
    assert fields["empty"] == ""
    assert fields["level"] == "warning"


def test_exception_traceback_is_one_logfmt_field(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("info", "logfmt", stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("t").exception("task crashed")
    [line] = _lines(stream)
    fields = parse_logfmt(line)
    assert fields["level"] == "error"
    assert fields["exc"].startswith("Traceback")
    assert "RuntimeError: boom" in fields["exc"]


def test_json_format_writes_one_object_per_line(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("debug", "json", stream=stream)
    log = logging.getLogger("exporter.json")
    log.debug("first", extra={"task": "websocket:main"})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("second")
    first, second = (json.loads(line) for line in _lines(stream))
    assert first["level"] == "debug"
    assert first["logger"] == "exporter.json"
    assert first["msg"] == "first"
    assert first["task"] == "websocket:main"
    assert second["level"] == "error"
    assert "ValueError: bad" in second["exc"]


def test_level_filters_records_below_it(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("warning", "logfmt", stream=stream)
    log = logging.getLogger("t")
    log.info("hidden")
    log.warning("shown")
    assert [parse_logfmt(line)["msg"] for line in _lines(stream)] == ["shown"]


def test_configuring_twice_does_not_duplicate_lines(root_logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "logfmt", stream=first)
    setup_logging("info", "json", stream=second)
    logging.getLogger("t").info("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1


def test_extra_field_cannot_replace_a_standard_key(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("info", "logfmt", stream=stream)
    logging.getLogger("real").info("m", extra={"level": "fake", "logger": "fake"})
    fields = parse_logfmt(_lines(stream)[0])
    assert fields["level"] == "info"
    assert fields["logger"] == "real"
    assert fields["extra_level"] == "fake"


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "logfmt"), ("info", "xml")])
def test_unknown_level_or_format_is_rejected(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        setup_logging(level, fmt, stream=io.StringIO())


def test_redact_shows_at_most_four_characters() -> None:
    secret = "0123456789abcdef0123456789abcdef"
    assert redact(secret) == "0123…"
    assert secret not in redact(secret)


@pytest.mark.parametrize("value", ["abcdefgh", "abcd", "ab", "a"])
def test_redact_reveals_at_most_a_quarter_of_a_short_secret(value: str) -> None:
    shown = redact(value).removesuffix("…")
    assert redact(value).endswith("…")
    assert len(shown) <= len(value) // 4
    assert value.startswith(shown)


@pytest.mark.parametrize("value", ["", None])
def test_redact_of_nothing_is_just_the_ellipsis(value: str | None) -> None:
    assert redact(value) == "…"


# -- every log call of the package -------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[2] / "exporter"
LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
#: A ``key=value`` pair or a %-placeholder: a value that belongs in a field of its own.
VALUE_IN_MESSAGE = re.compile(r"[\w.\-]+=|%[sdrfi(]")


def _log_calls(tree: ast.AST) -> Iterator[ast.Call]:
    """Calls such as ``log.info(…)``, ``self._log.warning(…)``, ``self.logger.debug(…)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_METHODS:
            target = node.func.value
            name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
            if name.lstrip("_") in ("log", "logger"):
                yield node


def _message_problem(call: ast.Call) -> str | None:
    """Why the call's message is not a constant sentence with its values in ``extra=`` (None when it is)."""
    if len(call.args) != 1:
        return "positional arguments after the message: pass them in extra="
    message = call.args[0]
    branches = [message.body, message.orelse] if isinstance(message, ast.IfExp) else [message]
    for branch in branches:
        if isinstance(branch, ast.Name | ast.Attribute):
            continue  # a message chosen by the caller (one of a few constants), e.g. RejectionLog's
        if not (isinstance(branch, ast.Constant) and isinstance(branch.value, str)):
            return "the message is built at run time: keep it constant and pass the values in extra="
        if VALUE_IN_MESSAGE.search(branch.value):
            return "a value inside the message: pass it in extra="
    return None


def test_every_log_call_has_a_constant_message_and_its_values_in_extra_fields() -> None:
    problems, calls = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in _log_calls(ast.parse(path.read_text(), filename=str(path))):
            calls += 1
            problem = _message_problem(call)
            if problem is not None:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{call.lineno}: {problem}")
    assert calls > 100  # the walk found the package's log calls
    assert problems == []


@pytest.mark.parametrize(
    "source",
    [
        'log.info("scenario forces 429s path=%s count=%d", path, count)',
        'log.info(f"relay could not {what}")',
        'self._log.warning("dropped peer=" + peer)',
        'log.error("a" if x else f"b {y}")',
    ],
)
def test_the_check_refuses_values_inside_messages(source: str) -> None:
    [call] = _log_calls(ast.parse(source))
    assert _message_problem(call) is not None
