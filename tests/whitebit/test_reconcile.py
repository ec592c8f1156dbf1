"""History reconciliation against the simulator over real sockets, with a real Exporter.

The exporter runs on a hand-moved clock (``Clock``): the grace period passes only when a test says
so, and "not yet counted" is checked after whole history polls have run (counted from the
simulator's request log), never after a sleep. The simulator keeps real time for ``createdAt``.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, replace
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.registry import CollectorRegistry

from exporter.app import Exporter
from exporter.config.schema import (
    Config,
    ListenAddress,
    PollConfig,
    StateConfig,
    WebConfig,
    WebhooksConfig,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
)
from exporter.core.state import MIGRATIONS, StateStore, TransferRecord
from exporter.simulator.model import Transfer
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from exporter.whitebit.reconcile import CURSOR_NAME, HistoryPoll, MissedWebhooks, due_since
from exporter.whitebit.rest import MAIN_HISTORY
from exporter.whitebit.signing import compact_json, sign_body
from exporter.whitebit.transfers import (
    FINAL_LEVEL,
    PENDING_LEVEL,
    TransferBook,
    advance,
    expected_level,
    observation_from_history,
    observation_from_webhook,
    webhook_level,
)
from tests.helpers import wait_for

ACCOUNT = "main"
KEY, SECRET = "recon-key", "recon-secret"
HOOK_KEY, HOOK_SECRET = "recon-hook-key", "recon-hook-secret"
GRACE = 60.0
LOOPBACK = ListenAddress("127.0.0.1", 0)


class Clock:
    """The exporter's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def account_config(sim: Simulator, *, webhook: bool = True, retry_window: float = GRACE) -> WhitebitAccountConfig:
    # The retry window equals the grace here unless a test says otherwise: a webhook is counted missed
    # as soon as it is overdue (test_an_overdue_webhook_... covers the two apart).
    return WhitebitAccountConfig(
        name=ACCOUNT,
        rest_url=sim.url,
        ws_url=sim.ws_url,
        api_key=KEY,
        api_secret=SECRET,
        poll=PollConfig(main_balance=60.0, collateral=60.0, history=0.1, trade_balance=60.0),
        reconcile_grace=GRACE,
        webhook_retry_window=retry_window,
        webhook=WhitebitWebhookConfig(public_key=HOOK_KEY, secrets=(HOOK_SECRET,)) if webhook else None,
    )


def config(sim: Simulator, state: Path, *, webhook: bool = True, retry_window: float = GRACE) -> Config:
    return Config(
        web=WebConfig(listen_address=LOOPBACK),
        webhooks=WebhooksConfig(listen_address=LOOPBACK),
        state=StateConfig(path=str(state)),
        whitebit=(account_config(sim, webhook=webhook, retry_window=retry_window),),
    )


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(
        SimulatorSettings(
            accounts=(
                SimulatedAccount(
                    ACCOUNT, api_key=KEY, api_secret=SECRET, webhook_key=HOOK_KEY, webhook_secret=HOOK_SECRET
                ),
            ),
            seed=5,
        )
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


@asynccontextmanager
async def running(
    sim: Simulator, state: Path, clock: Clock, *, webhook: bool = True, retry_window: float = GRACE
) -> AsyncIterator[Exporter]:
    """An exporter watching the simulated account; the simulator's webhooks go to it."""
    exporter = Exporter(config(sim, state, webhook=webhook, retry_window=retry_window), clock=clock)
    await exporter.start()
    try:
        if webhook:
            url = exporter.webhooks_url + "/webhooks/whitebit"
            if sim.webhooks is None:
                await sim.connect_webhooks(url, None)
            else:
                sim.webhooks.url = url  # a restarted exporter listens on another port
        await wait_for(
            lambda: exporter.state.get_cursor(ACCOUNT, "history") is not None,
            timeout=10,
            message="the baseline history poll never completed",
        )
        yield exporter
    finally:
        await exporter.stop()


def history_requests(sim: Simulator) -> int:
    return int(sim.rest.stats().get(MAIN_HISTORY, {}).get("requests", 0))


async def polls_pass(sim: Simulator, count: int = 2) -> None:
    """Wait until ``count`` more history requests arrived: the poll before the last one has finished."""
    target = history_requests(sim) + count
    await wait_for(lambda: history_requests(sim) >= target, timeout=10)


def overdue(exporter: Exporter, kind: str = "deposit") -> float | None:
    return exporter.registry.get_sample_value("whitebit_webhooks_overdue", {"account": ACCOUNT, "kind": kind})


def missed(exporter: Exporter, kind: str = "deposit") -> float | None:
    return exporter.registry.get_sample_value("whitebit_webhooks_missed_total", {"account": ACCOUNT, "kind": kind})


def in_flight(exporter: Exporter, status: str, kind: str = "deposit") -> float | None:
    return exporter.registry.get_sample_value(
        "whitebit_transfers_in_flight", {"account": ACCOUNT, "kind": kind, "status": status}
    )


def records(exporter: Exporter) -> list[TransferRecord]:
    return exporter.state.transfers(ACCOUNT)


def record_of(exporter: Exporter, transfer: Transfer) -> TransferRecord | None:
    found = [r for r in records(exporter) if r.details.get("transaction_id") == transfer.transaction_id]
    assert len(found) <= 1
    return found[0] if found else None


def seen_in_history(exporter: Exporter, transfer: Transfer, status: int | None = None) -> Callable[[], bool]:
    def check() -> bool:
        record = record_of(exporter, transfer)
        return record is not None and record.history_seen and (status is None or record.status == status)

    return check


async def deliver_late(exporter: Exporter, method: str, transfer: Transfer) -> int:
    """POST the webhook the simulator dropped, signed as WhiteBIT would, much later than it was due."""
    body = compact_json(
        {
            "method": method,
            "params": {**transfer.to_webhook_params(), "nonce": time.time_ns() // 1_000_000},
            "id": str(uuid.uuid4()),
        }
    )
    headers = sign_body(body, key=HOOK_KEY, secret=HOOK_SECRET)
    async with (
        aiohttp.ClientSession() as session,
        session.post(exporter.webhooks_url + "/webhooks/whitebit", data=body, headers=headers) as response,
    ):
        return response.status


def sender(sim: Simulator) -> Any:
    assert sim.webhooks is not None
    return sim.webhooks


# --- Must show -----------------------------------------------------------------------------------


async def test_a_dropped_deposit_webhook_is_counted_missed_once_after_the_grace_period(
    sim: Simulator, tmp_path: Path
) -> None:
    clock = Clock()
    async with running(sim, tmp_path / "state.db", clock) as exporter:
        assert missed(exporter, "deposit") == 0 and missed(exporter, "withdraw") == 0
        sender(sim).drop_next(1, "deposit.accepted")
        deposit = sim.exchange.start_deposit(ACCOUNT, "USDT", D("25.5"), confirmations_required=3)
        await wait_for(seen_in_history(exporter, deposit), timeout=10)
        assert in_flight(exporter, "pending") == 1  # from history alone
        await polls_pass(sim)
        assert missed(exporter) == 0  # the grace has not passed

        clock.advance(GRACE + 1)
        await wait_for(lambda: missed(exporter) == 1, timeout=10)
        await polls_pass(sim)
        assert missed(exporter) == 1 and missed(exporter, "withdraw") == 0
        assert record_of(exporter, deposit).missed_counted  # type: ignore[union-attr]

        # The webhook arrives after the grace: processed (one transfer, now known to webhooks) and
        # not counted again; nor is the credit that follows, whose webhook comes in time.
        assert await deliver_late(exporter, "deposit.accepted", deposit) == 200
        sim.exchange.confirm_deposit(ACCOUNT, deposit.transaction_id)
        sim.exchange.credit_deposit(ACCOUNT, deposit.transaction_id)
        await wait_for(seen_in_history(exporter, deposit, status=3), timeout=10)
        clock.advance(GRACE + 1)
        await polls_pass(sim)
        assert missed(exporter) == 1
        [record] = records(exporter)
        assert record.webhook_seen and record.final and record.outcome == "successful"
        assert (
            exporter.registry.get_sample_value(
                "whitebit_webhooks_verified_total", {"account": ACCOUNT, "method": "deposit.accepted"}
            )
            == 1
        )
        assert (
            exporter.registry.get_sample_value(
                "whitebit_transfers_total",
                {"account": ACCOUNT, "kind": "deposit", "outcome": "successful", "asset": "USDT"},
            )
            == 1
        )


async def test_a_missed_webhook_is_counted_once_across_a_restart_before_the_grace_ends(
    sim: Simulator, tmp_path: Path
) -> None:
    clock = Clock()
    state = tmp_path / "state.db"
    async with running(sim, state, clock) as exporter:
        sender(sim).drop_next(1, "deposit.")
        deposit = sim.exchange.start_deposit(ACCOUNT, "BTC", D("0.0105"))
        await wait_for(seen_in_history(exporter, deposit), timeout=10)
        await polls_pass(sim)
        assert missed(exporter) == 0
    # Down past the grace; the grace runs from when history first showed it, not from the restart.
    clock.advance(GRACE + 1)
    async with running(sim, state, clock) as exporter:
        await wait_for(lambda: missed(exporter) == 1, timeout=10)
        await polls_pass(sim)
        assert missed(exporter) == 1
    clock.advance(GRACE + 1)
    async with running(sim, state, clock) as exporter:
        await polls_pass(sim, 3)
        assert missed(exporter) == 0  # counted by the previous process, never again
        assert in_flight(exporter, "pending") == 1
        [record] = records(exporter)
        assert record.missed_counted and not record.webhook_seen


async def test_a_webhook_arriving_late_but_within_the_grace_is_not_counted(sim: Simulator, tmp_path: Path) -> None:
    clock = Clock()
    async with running(sim, tmp_path / "state.db", clock) as exporter:
        sender(sim).drop_next(1, "deposit.accepted")
        deposit = sim.exchange.start_deposit(ACCOUNT, "ETH", D("1.25"))
        await wait_for(seen_in_history(exporter, deposit), timeout=10)
        clock.advance(GRACE - 1)
        await polls_pass(sim)
        assert await deliver_late(exporter, "deposit.accepted", deposit) == 200
        clock.advance(GRACE * 10)
        await polls_pass(sim, 3)
        assert missed(exporter) == 0
        [record] = records(exporter)
        assert record.webhook_seen and record.history_seen and not record.missed_counted


async def test_a_travel_rule_deposit_shows_in_flight_from_history_alone(sim: Simulator, tmp_path: Path) -> None:
    clock = Clock()
    async with running(sim, tmp_path / "state.db", clock) as exporter:
        deposit = sim.exchange.start_deposit(ACCOUNT, "USDT", D(700), travel_rule=True)  # 27: no webhook
        await wait_for(lambda: in_flight(exporter, "travel_rule_frozen") == 1, timeout=10)
        sim.exchange.advance_travel_rule(ACCOUNT, deposit.transaction_id)  # 28: no webhook either
        await wait_for(lambda: in_flight(exporter, "travel_rule_processing") == 1, timeout=10)
        assert in_flight(exporter, "travel_rule_frozen") == 0
        # Statuses without a webhook never count as missed, however long they last.
        clock.advance(GRACE * 10)
        await polls_pass(sim)
        assert missed(exporter) == 0

        # Credited, and its deposit.processed lost too: the lifecycle ends from history alone, and
        # that lost webhook (which WhiteBIT does send) is counted once the grace has passed.
        sender(sim).drop_next(1, "deposit.processed")
        sim.exchange.credit_deposit(ACCOUNT, deposit.transaction_id)
        await wait_for(lambda: in_flight(exporter, "travel_rule_processing") == 0, timeout=10)
        assert (
            exporter.registry.get_sample_value(
                "whitebit_transfers_total",
                {"account": ACCOUNT, "kind": "deposit", "outcome": "successful", "asset": "USDT"},
            )
            == 1
        )
        assert missed(exporter) == 0
        clock.advance(GRACE + 1)
        await wait_for(lambda: missed(exporter) == 1, timeout=10)
        [record] = records(exporter)
        assert not record.webhook_seen and record.final


async def test_two_history_records_with_one_transaction_hash_are_two_transfers(sim: Simulator, tmp_path: Path) -> None:
    clock = Clock()
    async with running(sim, tmp_path / "state.db", clock) as exporter:
        # One on-chain transaction paying two addresses, both webhooks delivered.
        first = sim.exchange.start_deposit(ACCOUNT, "USDT", D(100), transaction_hash="0xshared")
        second = sim.exchange.start_deposit(ACCOUNT, "USDT", D(250), transaction_hash="0xshared")
        await wait_for(lambda: all(seen_in_history(exporter, t)() for t in (first, second)), timeout=10)
        assert in_flight(exporter, "pending") == 2
        both = records(exporter)
        assert len(both) == 2 and all(r.webhook_seen and r.history_seen for r in both)
        assert {r.details["transaction_hash"] for r in both} == {"0xshared"}
        clock.advance(GRACE + 1)
        await polls_pass(sim)
        assert missed(exporter) == 0
        # Even records alike in everything but their transactionId (same hash, address, amount and
        # second) are two transfers, and both their lost webhooks count.
        sender(sim).drop_next(2, "deposit.")
        twins = [
            sim.exchange.start_deposit(ACCOUNT, "BTC", D("0.5"), transaction_hash="0xtwin", address="bc1twin")
            for _ in range(2)
        ]
        await wait_for(lambda: all(seen_in_history(exporter, t)() for t in twins), timeout=10)
        assert in_flight(exporter, "pending") == 4
        assert len(records(exporter)) == 4
        clock.advance(GRACE + 1)
        await wait_for(lambda: missed(exporter) == 2, timeout=10)


# --- baseline, accounts without a webhook, paging -------------------------------------------------


async def test_history_before_the_first_poll_is_baseline_but_later_webhooks_are_expected(
    sim: Simulator, tmp_path: Path
) -> None:
    clock = Clock()
    # Activity before the exporter ever ran: no webhook reached it.
    done = sim.exchange.start_deposit(ACCOUNT, "USDT", D(40), confirmations_required=1)
    sim.exchange.credit_deposit(ACCOUNT, done.transaction_id)
    waiting = sim.exchange.start_deposit(ACCOUNT, "USDT", D(60))
    async with running(sim, tmp_path / "state.db", clock) as exporter:
        # Only the transfer still in flight is taken in; the final one is old news, not an outcome.
        assert [r.details["transaction_id"] for r in records(exporter)] == [waiting.transaction_id]
        assert (
            exporter.registry.get_sample_value(
                "whitebit_transfers_total",
                {"account": ACCOUNT, "kind": "deposit", "outcome": "successful", "asset": "USDT"},
            )
            == 0
        )
        clock.advance(GRACE * 10)
        await polls_pass(sim)
        assert missed(exporter) == 0
        # The baseline deposit is credited while the exporter watches, and that webhook is lost.
        sender(sim).drop_next(1, "deposit.processed")
        sim.exchange.credit_deposit(ACCOUNT, waiting.transaction_id)
        await wait_for(seen_in_history(exporter, waiting, status=3), timeout=10)
        await polls_pass(sim)
        assert missed(exporter) == 0
        clock.advance(GRACE + 1)
        await wait_for(lambda: missed(exporter) == 1, timeout=10)


async def test_an_account_without_a_webhook_gets_transfers_from_history_and_no_missed_series(
    sim: Simulator, tmp_path: Path
) -> None:
    clock = Clock()
    async with running(sim, tmp_path / "state.db", clock, webhook=False) as exporter:
        withdrawal = sim.exchange.start_withdrawal(ACCOUNT, "USDT", D(10), unique_id="payout-1")
        sim.exchange.process_withdrawal(ACCOUNT, withdrawal.transaction_id, status=12)
        await wait_for(lambda: in_flight(exporter, "pending", "withdraw") == 1, timeout=10)
        clock.advance(GRACE * 10)
        await polls_pass(sim)
        assert missed(exporter, "withdraw") is None and missed(exporter, "deposit") is None


async def test_history_is_paged_and_a_deep_in_flight_transfer_is_rechecked(sim: Simulator, tmp_path: Path) -> None:
    clock = Clock()
    oldest = sim.exchange.start_deposit(ACCOUNT, "ETH", D(3))
    for i in range(230):
        sim.exchange.start_withdrawal(ACCOUNT, "USDT", D(1), unique_id=f"bulk-{i}")
    async with running(sim, tmp_path / "state.db", clock) as exporter:
        assert record_of(exporter, oldest) is not None  # read from the third page of the baseline
        assert in_flight(exporter, "unconfirmed", "withdraw") == 230
        sim.exchange.credit_deposit(ACCOUNT, oldest.transaction_id)
        await wait_for(lambda: in_flight(exporter, "pending") == 0, timeout=10)
        assert record_of(exporter, oldest).final  # type: ignore[union-attr]
        # With nothing in flight below the newest records, a poll reads one page.
        for item in sim.exchange.accounts[ACCOUNT].transfers:
            if item.method == 2:
                sim.exchange.cancel_withdrawal(ACCOUNT, item.transaction_id)
        await wait_for(lambda: in_flight(exporter, "unconfirmed", "withdraw") == 0, timeout=10)
        await polls_pass(sim)
        before = history_requests(sim)
        await polls_pass(sim, 3)
        assert history_requests(sim) - before >= 3  # and each poll was answered by one page:
        assert sim.rest.stats()[MAIN_HISTORY]["statuses"] == {"200": history_requests(sim)}


async def test_every_new_record_is_read_when_history_was_empty_at_the_baseline(sim: Simulator, tmp_path: Path) -> None:
    clock = Clock()
    async with running(sim, tmp_path / "state.db", clock, webhook=False) as exporter:
        assert records(exporter) == []
        for _ in range(150):  # more than a page between two polls
            sim.exchange.start_deposit(ACCOUNT, "USDT", D(2))
        await wait_for(lambda: in_flight(exporter, "pending") == 150, timeout=10)


async def test_more_than_10000_records_still_get_their_baseline_and_their_reconciliation(
    sim: Simulator, tmp_path: Path
) -> None:
    # A deposit and a withdrawal still in flight under more than 10,000 records of their own method:
    # deeper than offset + limit can ever reach. The baseline finds them with the status filter, and
    # when the withdrawal finishes without its webhook, a look-up by its address still sees it.
    clock = Clock()
    exchange = sim.exchange
    now = time.time()
    deep_deposit = exchange.start_deposit(ACCOUNT, "ETH", D(3))
    deep_withdrawal = exchange.start_withdrawal(ACCOUNT, "USDT", D(7), unique_id="deep", address="TDeepAddress")
    exchange.process_withdrawal(ACCOUNT, deep_withdrawal.transaction_id)
    for transfer in (deep_deposit, deep_withdrawal):
        transfer.created_at = int(now - 3 * 86400)
    for i in range(10_050):
        deposit = exchange.start_deposit(ACCOUNT, "USDT", D(1))
        exchange.credit_deposit(ACCOUNT, deposit.transaction_id)
        withdrawal = exchange.start_withdrawal(ACCOUNT, "USDT", D(1), unique_id=f"bulk-{i}")
        exchange.process_withdrawal(ACCOUNT, withdrawal.transaction_id)
        exchange.complete_withdrawal(ACCOUNT, withdrawal.transaction_id)
        deposit.created_at = withdrawal.created_at = int(now - 2 * 86400 + i)
    async with running(sim, tmp_path / "state.db", clock) as exporter:
        assert in_flight(exporter, "pending") == 1
        assert in_flight(exporter, "pending", "withdraw") == 1
        assert record_of(exporter, deep_deposit) is not None and record_of(exporter, deep_withdrawal) is not None
        # The deposit is credited with its webhook, the withdrawal paid without one.
        exchange.credit_deposit(ACCOUNT, deep_deposit.transaction_id)
        sender(sim).drop_next(1, "withdraw.")
        exchange.complete_withdrawal(ACCOUNT, deep_withdrawal.transaction_id)
        await wait_for(lambda: record_of(exporter, deep_deposit).final, timeout=10)  # type: ignore[union-attr]
        await wait_for(seen_in_history(exporter, deep_withdrawal, 3), timeout=10)
        clock.advance(GRACE + 1)
        await wait_for(lambda: missed(exporter, "withdraw") == 1, timeout=10)
        await polls_pass(sim, 4)
        assert missed(exporter, "deposit") == 0 and missed(exporter, "withdraw") == 1
        assert in_flight(exporter, "pending") == 0 and in_flight(exporter, "pending", "withdraw") == 0
    # Every request named its method, limit and offset, and kept offset + limit below 10,000: the
    # simulator refuses anything else with a 400.
    assert sim.rest.stats()[MAIN_HISTORY]["statuses"] == {"200": history_requests(sim)}


async def test_a_refused_status_filter_falls_back_to_a_deep_baseline_and_look_ups(
    sim: Simulator, tmp_path: Path
) -> None:
    # Should WhiteBIT refuse the status filter, the baseline reads as deep as the cap allows and a
    # deep transfer that finishes is still found, by its address.
    sim.rest.history_refuses_status_filter = True
    clock = Clock()
    now = time.time()
    deep = sim.exchange.start_withdrawal(ACCOUNT, "USDT", D(7), unique_id="deep", address="TDeepAddress")
    sim.exchange.process_withdrawal(ACCOUNT, deep.transaction_id)
    deep.created_at = int(now - 3 * 86400)
    for i in range(250):
        bulk = sim.exchange.start_withdrawal(ACCOUNT, "USDT", D(1), unique_id=f"bulk-{i}")
        sim.exchange.cancel_withdrawal(ACCOUNT, bulk.transaction_id)
        bulk.created_at = int(now - 2 * 86400 + i)
    async with running(sim, tmp_path / "state.db", clock) as exporter:
        assert in_flight(exporter, "pending", "withdraw") == 1
        sender(sim).drop_next(1, "withdraw.")
        sim.exchange.complete_withdrawal(ACCOUNT, deep.transaction_id)
        await wait_for(seen_in_history(exporter, deep, 3), timeout=10)
        clock.advance(GRACE + 1)
        await wait_for(lambda: missed(exporter, "withdraw") == 1, timeout=10)


async def test_an_overdue_webhook_warns_after_the_grace_and_counts_missed_only_after_the_retry_window(
    sim: Simulator, tmp_path: Path
) -> None:
    # WhiteBIT may retry a delivery for about a day: late is not missed.
    clock = Clock()
    window = 3600.0
    async with running(sim, tmp_path / "state.db", clock, retry_window=window) as exporter:
        assert (overdue(exporter), overdue(exporter, "withdraw")) == (0, 0)
        sender(sim).drop_next(2, "deposit.")
        late = sim.exchange.start_deposit(ACCOUNT, "USDT", D(40))
        lost = sim.exchange.start_deposit(ACCOUNT, "USDT", D(41))
        await wait_for(lambda: all(seen_in_history(exporter, t)() for t in (late, lost)), timeout=10)
        clock.advance(GRACE + 1)
        await wait_for(lambda: overdue(exporter) == 2, timeout=10)
        assert missed(exporter) == 0
        # One retry arrives, late: from then on it is not overdue, and never missed.
        assert await deliver_late(exporter, "deposit.accepted", late) == 200
        assert overdue(exporter) == 1
        # The other one stays overdue until the retry window has passed, then counts missed once.
        clock.advance(window - GRACE - 10)
        await polls_pass(sim, 3)
        assert (overdue(exporter), missed(exporter)) == (1, 0)
        clock.advance(20)
        await wait_for(lambda: missed(exporter) == 1, timeout=10)
        assert overdue(exporter) == 0
        await polls_pass(sim, 3)
        assert missed(exporter) == 1
    # After a restart, what is overdue is overdue again at the first poll, and missed is not recounted.
    async with running(sim, tmp_path / "state.db", clock, retry_window=window) as exporter:
        await polls_pass(sim, 3)
        assert (overdue(exporter), missed(exporter)) == (0, 0)


# --- the pure rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    kind: str
    status: int
    level: int | None


@pytest.mark.parametrize(
    "case",
    [
        _Case("deposit", 15, PENDING_LEVEL),
        _Case("deposit", 3, FINAL_LEVEL),
        _Case("deposit", 9, FINAL_LEVEL),
        *(_Case("deposit", s, None) for s in (5, 21, 22, 27, 28)),
        _Case("withdraw", 5, None),
        _Case("withdraw", 21, None),
        _Case("withdraw", 12, PENDING_LEVEL),
        _Case("withdraw", 18, FINAL_LEVEL),
    ],
)
def test_expected_webhook_level_per_status(case: _Case) -> None:
    assert expected_level(case.kind, case.status) == case.level


def _history(status: int, **extra: Any) -> dict[str, Any]:
    return {
        "method": 1,
        "status": status,
        "ticker": "USDT",
        "amount": "5",
        "createdAt": 1_700_000_000,
        "transactionId": "T-1",
        "address": "a",
        **extra,
    }


def _record(**changes: Any) -> TransferRecord:
    record = TransferRecord(
        account=ACCOUNT,
        kind="deposit",
        key="fp:x",
        status=15,
        status_name="pending",
        ticker="USDT",
        amount=D(5),
        created_at=1.0,
        updated_at=1.0,
    )
    return replace(record, **changes)


def _seen(record: TransferRecord, status: int, at: float, *, baseline: bool = False) -> TransferRecord:
    """``record`` after history showed it with ``status`` at ``at``, through the lifecycle's state machine."""
    obs = observation_from_history(ACCOUNT, _history(status), at)
    return advance(record, obs, record.key, at, baseline=baseline).record


def test_due_since_is_the_first_sighting_of_the_lowest_level_no_webhook_reached() -> None:
    record = _seen(_record(), 15, 100.0)
    record = _seen(record, 3, 200.0)
    assert due_since(record) == 100.0
    accepted = replace(record, webhook_seen=True, webhook_status=15)
    assert webhook_level(accepted) == PENDING_LEVEL and due_since(accepted) == 200.0
    processed = replace(record, webhook_seen=True, webhook_status=3)
    assert due_since(processed) is None
    # A baseline sighting waives what was already due then, not what comes after.
    base = _seen(_record(), 15, 100.0, baseline=True)
    assert due_since(base) is None
    later = _seen(base, 7, 300.0)
    assert due_since(later) == 300.0
    # Statuses without a webhook set nothing to wait for.
    frozen = _seen(_record(), 27, 100.0)
    assert due_since(frozen) is None


def test_a_transfer_whose_webhook_came_before_its_status_was_kept_is_never_due() -> None:
    # A row migrated from schema v1 may say a webhook came without saying how far it went.
    legacy = replace(_seen(_seen(_record(), 15, 100.0), 3, 200.0), webhook_seen=True, webhook_status=None)
    assert webhook_level(legacy) == FINAL_LEVEL and due_since(legacy) is None
    assert webhook_level(replace(legacy, webhook_seen=False)) == 0
    assert due_since(replace(legacy, webhook_seen=False)) == 100.0
    # Its next webhook says how far it went, as for any other transfer.
    obs = observation_from_webhook(ACCOUNT, "deposit.updated", _history(15), 300.0)
    hooked = advance(legacy, obs, legacy.key, 300.0).record
    assert hooked.webhook_status == 15 and due_since(hooked) == 200.0


def test_a_withdrawal_whose_only_webhook_was_unconfirmed_still_awaits_withdraw_pending() -> None:
    record = _record(kind="withdraw", key="uid:w", status=5, status_name="unconfirmed", webhook_seen=True)
    record = replace(record, webhook_status=5)
    obs = observation_from_history(ACCOUNT, {**_history(12), "method": 2, "uniqueId": "w"}, 100.0)
    record = advance(record, obs, record.key, 100.0).record
    assert webhook_level(record) == 0 and due_since(record) == 100.0


# --- one write per record, and state files from schema v1 ------------------------------------------


class FakeHistory:
    """Stands in for the RestClient: answers the history endpoint with ``records`` (newest first)."""

    def __init__(self, records: list[Mapping[str, Any]]) -> None:
        self.account = ACCOUNT
        self.records = records

    async def post(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        assert path == MAIN_HISTORY
        offset, limit, method = params["offset"], params["limit"], params["transactionMethod"]
        assert offset + limit < 10_000
        statuses = params.get("status")
        matching = [
            r for r in self.records if r.get("method") == method and (statuses is None or r.get("status") in statuses)
        ]
        page = matching[offset : offset + limit]
        return {"limit": limit, "offset": offset, "total": len(matching), "records": page}


def history_poll(store: StateStore, client: FakeHistory, clock: Clock) -> tuple[HistoryPoll, MissedWebhooks]:
    book = TransferBook(store, [ACCOUNT], clock=clock)
    missed = MissedWebhooks([ACCOUNT])
    # HistoryPoll uses nothing of its client but ``account`` and ``post``.
    poll = HistoryPoll(client, book, store, grace=GRACE, missed=missed, clock=clock)  # type: ignore[arg-type]
    return poll, missed


def missed_counts(missed: MissedWebhooks) -> list[float | None]:
    """[deposit, withdraw] values of ``whitebit_webhooks_missed_total``."""
    registry = CollectorRegistry()
    registry.register(missed)
    return [
        registry.get_sample_value("whitebit_webhooks_missed_total", {"account": ACCOUNT, "kind": kind})
        for kind in ("deposit", "withdraw")
    ]


def count_row_writes(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    """Count every transfer row the store writes, by (kind, key)."""
    writes: Counter[tuple[str, str]] = Counter()
    put, add = store.put_transfer, store.add_transfer

    def counted_put(record: TransferRecord) -> None:
        put(record)
        writes[(record.kind, record.key)] += 1

    def counted_add(record: TransferRecord) -> bool:
        inserted = add(record)
        writes[(record.kind, record.key)] += inserted
        return inserted

    monkeypatch.setattr(store, "put_transfer", counted_put)
    monkeypatch.setattr(store, "add_transfer", counted_add)
    return writes


async def test_a_history_poll_writes_each_transfer_row_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    deposit = _history(15, transactionId="D-1", createdAt=1_700_000_100)
    withdrawal = {**_history(1, transactionId="W-1", uniqueId="w-1", createdAt=1_700_000_200), "method": 2}
    client = FakeHistory([deposit])
    with StateStore.open(tmp_path / "state.db", clock=clock) as store:
        poll, missed = history_poll(store, client, clock)
        writes = count_row_writes(store, monkeypatch)
        # White-box: rows SQLite wrote, the cursor and the evidence (a feed, a row per record, the check) included.
        changes = store._conn().total_changes

        def rows_written_by_next_poll() -> tuple[dict[tuple[str, str], int], int]:
            nonlocal changes
            rows = dict(writes)
            writes.clear()
            before, changes = changes, store._conn().total_changes
            return rows, changes - before

        await poll()  # the baseline: the lifecycle, the first sighting and the waiver in one write
        [record] = store.transfers(ACCOUNT)
        assert (record.history_pending_at, record.history_waived) == (clock.now, PENDING_LEVEL)
        assert rows_written_by_next_poll() == ({("deposit", record.key): 1}, 2 + 1 + 1 + 1)

        clock.advance(1)
        client.records = [withdrawal, {**deposit, "status": 3}]
        await poll()
        by_kind = {r.kind: r for r in store.transfers(ACCOUNT)}
        assert by_kind["deposit"].final and by_kind["deposit"].history_final_at == clock.now
        assert by_kind["withdraw"].history_pending_at == clock.now
        assert rows_written_by_next_poll() == (
            {("deposit", record.key): 1, ("withdraw", by_kind["withdraw"].key): 1},
            3 + 1 + 2 + 1,
        )

        await poll()  # nothing new: no transfer row is written at all (the evidence is seen again)
        assert rows_written_by_next_poll() == ({}, 1 + 1 + 2 + 1)

        clock.advance(GRACE + 1)
        await poll()  # both fall due: each row is written once more, with its counted flag
        assert rows_written_by_next_poll() == (
            {("deposit", record.key): 1, ("withdraw", by_kind["withdraw"].key): 1},
            3 + 1 + 2 + 1,
        )
        assert [r.missed_counted for r in store.transfers(ACCOUNT)] == [True, True]
        assert missed_counts(missed) == [1, 1]


async def test_a_look_alike_of_a_transfer_counted_missed_is_not_counted_again(tmp_path: Path) -> None:
    # Two withdrawals alike in every field both views carry (their webhooks carry no uniqueId). The
    # first is counted missed; then one webhook comes, which may be the first's, late, or the second's.
    # Either way one miss happened among the two, and it was counted: the second is not counted too.
    clock = Clock()
    alike = {**_history(1), "method": 2, "createdAt": 1_700_000_000, "ticker": "USDT", "address": "TDest"}
    first = {**alike, "transactionId": "W-1", "uniqueId": "payout-1"}
    second = {**alike, "transactionId": "W-2", "uniqueId": "payout-2"}
    client = FakeHistory([])
    with StateStore.open(tmp_path / "state.db", clock=clock) as store:
        book = TransferBook(store, [ACCOUNT], clock=clock)
        missed = MissedWebhooks([ACCOUNT])
        # HistoryPoll uses nothing of its client but ``account`` and ``post``.
        poll = HistoryPoll(client, book, store, grace=GRACE, missed=missed, clock=clock)  # type: ignore[arg-type]
        await poll()  # the baseline
        client.records = [first]
        await poll()
        clock.advance(GRACE + 1)
        await poll()
        assert missed_counts(missed) == [0, 1]
        webhook = {k: v for k, v in alike.items() if k not in ("transactionId", "uniqueId")}
        book.observe(observation_from_webhook(ACCOUNT, "withdraw.pending", webhook, clock.now))
        client.records = [second, first]
        await poll()
        clock.advance(GRACE + 1)
        await poll()
        await poll()
        assert missed_counts(missed) == [0, 1]
        assert len(store.transfers(ACCOUNT)) == 2


def _v1_transfer(conn: sqlite3.Connection, kind: str, key: str, status: int, **fields: Any) -> None:
    row = {
        "account": ACCOUNT,
        "kind": kind,
        "key": key,
        "status": status,
        "status_name": "x",
        "ticker": "USDT",
        "amount": fields.pop("amount"),
        "created_at": 1_700_000_000.0,
        "updated_at": 1_700_000_000.0,
        "final": int(status in (3, 7, 4, 9, 18)),
        "outcome": None,
        "webhook_seen": 0,
        "history_seen": 1,
        "missed_counted": 0,
        "confirmations_actual": None,
        "confirmations_required": None,
        "details": json.dumps({"transaction_id": f"T-{key}", **fields.pop("details")}),
        **fields,
    }
    conn.execute(f"INSERT INTO transfers ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


async def test_a_v1_state_file_keeps_its_missed_webhook_outcomes(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "state.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(MIGRATIONS[0])  # type: ignore[arg-type]
        conn.execute("PRAGMA user_version = 1")
        seen = {"1": clock.now - 50, "2": clock.now - 30}
        # Its webhook came before v1 kept how far: never counted, however long history showed it.
        _v1_transfer(conn, "deposit", "legacy", 3, amount="1", webhook_seen=1, details={"history_levels": seen})
        # Only deposit.accepted came: the lost deposit.processed falls due when history showed it final.
        _v1_transfer(
            conn,
            "deposit",
            "accepted",
            3,
            amount="2",
            webhook_seen=1,
            details={"webhook_status": 15, "history_levels": seen},
        )
        # The baseline waived what history showed then.
        _v1_transfer(
            conn, "deposit", "waived", 15, amount="3", details={"history_levels": {"1": 1.0}, "history_waived": 1}
        )
        # No webhook at all.
        _v1_transfer(
            conn, "withdraw", "history-only", 12, amount="4", details={"history_levels": {"1": clock.now - 40}}
        )
        # An unreadable waiver waived every level in v1.
        _v1_transfer(conn, "withdraw", "odd", 3, amount="5", details={"history_levels": seen, "history_waived": "x"})
        conn.execute(
            "INSERT INTO cursors VALUES (?, ?, ?, ?)",
            (ACCOUNT, CURSOR_NAME, json.dumps({"newest": 1.7e9, "baseline_at": 1.0, "baseline_newest": 1.7e9}), 1.0),
        )

    with StateStore.open(path, clock=clock) as store:
        records = {r.key: r for r in store.transfers(ACCOUNT)}
        assert {key: due_since(r) for key, r in records.items()} == {
            "legacy": None,
            "accepted": clock.now - 30,
            "waived": None,
            "history-only": clock.now - 40,
            "odd": None,
        }
        poll, missed = history_poll(store, FakeHistory([]), clock)
        await poll()
        assert missed_counts(missed) == [0, 0]  # the grace has not passed
        clock.advance(GRACE)
        await poll()
        assert missed_counts(missed) == [1, 1]
        counted = sorted(r.key for r in store.transfers(ACCOUNT) if r.missed_counted)
        assert counted == ["accepted", "history-only"]
    # Counted once, across a restart too.
    with StateStore.open(path, clock=clock) as store:
        clock.advance(GRACE)
        poll, missed = history_poll(store, FakeHistory([]), clock)
        await poll()
        assert missed_counts(missed) == [0, 0]


# --- the demo -------------------------------------------------------------------------------------
