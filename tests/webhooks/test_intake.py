"""The receivers' shared kit: fixed replies and rate-limited rejection logs."""

from __future__ import annotations

import json
import logging

import pytest

from exporter.webhooks.intake import REJECT_REASONS, RejectionLog, Replies


def test_replies_are_fixed_bodies_that_echo_nothing() -> None:
    replies = Replies((*REJECT_REASONS, "stale_timestamp"))
    assert json.loads(replies.reply(200, "ok").body) == {"status": "ok"}
    assert json.loads(replies.reply(200, "duplicate").body) == {"status": "duplicate"}
    rejected = replies.reply(401, "stale_timestamp")
    assert rejected.status == 401 and rejected.content_type == "application/json"
    assert json.loads(rejected.body) == {"status": "rejected", "reason": "stale_timestamp"}
    assert json.loads(replies.reply(503, "unavailable").body) == {"status": "error", "reason": "unavailable"}


def test_rejections_are_logged_at_most_once_per_interval_with_the_suppressed_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limiter = RejectionLog(logging.getLogger("test.rejections"), interval=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.rejections")
    fields = {"provider": "whitebit", "account": "main", "reason": "bad_signature"}
    key = ("whitebit", "main", "bad_signature")
    for _ in range(5):
        limiter.rejected(key, lambda: fields)
    limiter.rejected(("whitebit", "main", "payload_mismatch"), lambda: {**fields, "reason": "payload_mismatch"})
    now[0] = 10.0
    limiter.rejected(key, lambda: fields)
    records = [(r.__dict__["reason"], r.__dict__.get("suppressed")) for r in caplog.records]
    assert records == [("bad_signature", None), ("payload_mismatch", None), ("bad_signature", 4)]


def test_a_rejection_log_can_say_who_rejected(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RejectionLog(logging.getLogger("test.listener"), message="request refused by the webhook listener")
    caplog.set_level(logging.WARNING, logger="test.listener")
    limiter.rejected(("listener", "", "not_found"), lambda: {"reason": "not_found"})
    assert [r.getMessage() for r in caplog.records] == ["request refused by the webhook listener"]
    default = RejectionLog(logging.getLogger("test.listener"))
    default.rejected(("whitebit", "main", "bad_json"), lambda: {"reason": "bad_json"})
    assert caplog.records[-1].getMessage() == "webhook rejected"
