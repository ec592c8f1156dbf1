"""The transfer lifecycle: matching the two views, statuses per method, never backwards, each outcome counted once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from exporter.core.state import MIGRATIONS, StateStore, TransferRecord
from exporter.whitebit.transfers import (
    CREATED_AT_TOLERANCE,
    FINAL_LEVEL,
    IN_FLIGHT_STATUSES,
    PENDING_LEVEL,
    ObservationError,
    TransferBook,
    TransferCollector,
    TransferObservation,
    TransferUpdate,
    advance,
    asset_of,
    distinct_finals,
    key_fields,
    legacy_fingerprint,
    matches,
    observation_from_history,
    observation_from_webhook,
    record_key_fields,
    status_name,
)

NOW = 1_700_000_100.0


def deposit_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "address": "TAddr1",
        "amount": "10.500000000000000000",
        "createdAt": 1_700_000_000,
        "currency": "Tether US",
        "description": "",
        "fee": "0.000000000000000000",
        "memo": "",
        "method": 1,
        "network": "TRC20",
        "status": 15,
        "ticker": "USDT",
        "transactionHash": "0xhash1",
        "uniqueId": None,
        "confirmations": {"actual": 0, "required": 3},
    }
    params.update(overrides)
    return params


def withdraw_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "address": "TDest",
        "amount": "100.000000000000000000",
        "createdAt": 1_700_000_000,
        "currency": "Tether US",
        "ticker": "USDT",
        "description": None,
        "fee": "1.000000000000000000",
        "memo": "",
        "method": 2,
        "network": "TRC20",
        "status": 5,
        "transactionHash": "",
        "uniqueId": "payout-1",
    }
    params.update(overrides)
    return params


def hook(method: str, params: dict[str, Any], account: str = "main") -> TransferObservation:
    return observation_from_webhook(account, method, params, NOW)


# -- normalizing ----------------------------------------------------------------------------------


def test_webhook_method_decides_finality_over_placeholder_status() -> None:
    # WhiteBIT's examples show status 15 on every event; deposit.processed is final anyway.
    assert hook("deposit.processed", deposit_params(status=15)).status == 3
    assert hook("deposit.processed", deposit_params(status=7)).status == 7
    assert hook("deposit.canceled", deposit_params(status=9)).status == 9
    assert hook("withdraw.successful", withdraw_params(status=15)).status == 3
    assert hook("withdraw.partial_successful", withdraw_params(status=None)).status == 18
    # A non-final method never finalizes, whatever code it carries.
    assert hook("deposit.accepted", deposit_params(status=3)).status == 15
    assert hook("withdraw.pending", withdraw_params(status=12)).status == 12
    assert hook("withdraw.unconfirmed", withdraw_params(status="x")).status == 5


def test_missing_and_null_fields_the_documents_disagree_on_are_accepted() -> None:
    params = deposit_params()
    for name in ("method", "uniqueId", "network", "confirmations", "status"):
        params.pop(name)
    obs = hook("deposit.updated", params)
    assert (obs.unique_id, obs.network, obs.confirmations_actual, obs.status) == (None, None, None, 15)
    obs = hook("deposit.canceled", deposit_params(network=None, confirmations=None))
    assert obs.network is None and obs.status == 4


@pytest.mark.parametrize(
    "params", [deposit_params(amount=None), deposit_params(amount="ten"), deposit_params(ticker=None, currency=None)]
)
def test_a_transfer_without_amount_or_asset_is_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ObservationError):
        hook("deposit.accepted", params)


def test_history_records_accept_both_field_spellings() -> None:
    camel = {"method": 2, "status": 3, "ticker": "BTC", "amount": "0.5", "transactionId": "T1", "uniqueId": "U1"}
    snake = {"method": 2, "status": 3, "ticker": "BTC", "amount": "0.5", "transaction_id": "T1", "unique_id": "U1"}
    assert observation_from_history("main", camel, NOW) == observation_from_history("main", snake, NOW)
    assert observation_from_history("main", camel, NOW).source == "history"
    with pytest.raises(ObservationError):
        observation_from_history("main", {**camel, "method": 3}, NOW)


# -- matching the two views -------------------------------------------------------------------------


def history(status: int, **overrides: Any) -> dict[str, Any]:
    """The history record of the transfer ``deposit_params()`` describes, in history's own forms."""
    record: dict[str, Any] = {
        **deposit_params(status=status, amount="10.5", fee="0"),
        "transactionId": "T-1",
        "details": {"partial": None},
    }
    record.update(overrides)
    return record


def record_of(obs: TransferObservation) -> TransferRecord:
    return advance(None, obs, "k", NOW).record


def test_the_asset_is_the_plain_ticker() -> None:
    assert [asset_of(t) for t in ("USDT_ETH", "usdt", " USDT_TRON ", "BTC", "USD_VISAMASTER")] == [
        "USDT",
        "USDT",
        "USDT",
        "BTC",
        "USD",
    ]
    assert hook("deposit.accepted", deposit_params(ticker="USDT_ETH")).asset == "USDT"


def test_views_match_across_ticker_suffix_amount_format_network_ids_and_status() -> None:
    webhook = hook("deposit.accepted", deposit_params(ticker="USDT_ETH", network="ERC20"))
    record = record_of(webhook)
    assert record.ticker == "USDT"
    same = [
        observation_from_history("main", history(3, network="ERC20"), NOW),
        observation_from_history("main", {**history(3), "transaction_id": "T-1", "transactionId": None}, NOW),
        hook("deposit.canceled", deposit_params(ticker="USDT_ETH", network=None, amount="10.50", status=4)),
        hook("deposit.processed", deposit_params(amount=10.5, createdAt="1700000000", address="taddr1")),
        hook("deposit.processed", deposit_params(memo=None, uniqueId=None, confirmations=None)),
        hook("deposit.processed", deposit_params(createdAt=1_700_000_000 + CREATED_AT_TOLERANCE)),
    ]
    assert [matches(record, obs) for obs in same] == [True] * len(same)
    other = [
        hook("deposit.accepted", deposit_params(address="TAddr2")),
        hook("deposit.accepted", deposit_params(amount="10.500000000000000001")),
        hook("deposit.accepted", deposit_params(ticker="USDC_ETH")),
        hook("deposit.accepted", deposit_params(memo="tag-9")),
        hook("deposit.accepted", deposit_params(transactionHash="0xother")),
        hook("deposit.accepted", deposit_params(createdAt=1_700_000_000 + CREATED_AT_TOLERANCE + 1)),
    ]
    assert [matches(record, obs) for obs in other] == [False] * len(other)


def test_one_transaction_hash_paying_two_addresses_is_two_deposits() -> None:
    a = record_of(hook("deposit.accepted", deposit_params(address="A1")))
    assert not matches(a, hook("deposit.accepted", deposit_params(address="A2")))


def test_a_withdrawal_still_matches_once_its_hash_appears() -> None:
    record = record_of(hook("withdraw.unconfirmed", withdraw_params(uniqueId=None)))
    assert matches(record, hook("withdraw.pending", withdraw_params(uniqueId=None, transactionHash="0xabc")))
    broadcast = record_of(hook("withdraw.pending", withdraw_params(transactionHash="0xabc")))
    assert matches(broadcast, hook("withdraw.successful", withdraw_params(transactionHash="0xdef")))


# -- the pure state machine ----------------------------------------------------------------------


def test_first_sighting_creates_a_record_and_a_final_one_counts_its_outcome() -> None:
    t = advance(None, hook("deposit.accepted", deposit_params()), "k", NOW)
    assert t.record.status_name == "pending" and not t.record.final and t.counted_outcome is None
    t = advance(None, hook("deposit.processed", deposit_params()), "k", NOW)
    assert t.record.final and t.record.outcome == "successful" and t.counted_outcome == "successful"


def test_outcome_is_counted_once_however_many_deliveries_report_it() -> None:
    t = advance(None, hook("deposit.accepted", deposit_params()), "k", NOW)
    t = advance(t.record, hook("deposit.processed", deposit_params()), "k", NOW)
    assert t.counted_outcome == "successful"
    again = advance(t.record, hook("deposit.processed", deposit_params(status=7)), "k", NOW + 1)
    assert again.counted_outcome is None and again.record.status == 3 and not again.conflict


def test_a_final_record_never_moves_again() -> None:
    final = advance(None, hook("withdraw.successful", withdraw_params()), "k", NOW).record
    for method in ("withdraw.pending", "withdraw.unconfirmed"):
        t = advance(final, hook(method, withdraw_params()), "k", NOW + 5)
        assert t.record.status == 3 and t.record.final and t.counted_outcome is None
    conflict = advance(final, hook("withdraw.canceled", withdraw_params()), "k", NOW + 5)
    assert conflict.conflict and conflict.record.outcome == "successful" and conflict.counted_outcome is None


def test_a_late_retry_of_an_earlier_stage_does_not_move_back() -> None:
    pending = advance(None, hook("withdraw.pending", withdraw_params(status=2)), "k", NOW).record
    t = advance(pending, hook("withdraw.unconfirmed", withdraw_params()), "k", NOW + 1)
    assert t.record.status == 2 and t.record.status_name == "pending"


def test_confirmations_only_grow() -> None:
    record = advance(
        None, hook("deposit.updated", deposit_params(confirmations={"actual": 2, "required": 3})), "k", NOW
    ).record
    late = advance(record, hook("deposit.accepted", deposit_params()), "k", NOW + 1).record
    assert (late.confirmations_actual, late.confirmations_required) == (2, 3)


def test_unchanged_observation_does_not_touch_the_record() -> None:
    record = advance(None, seen_in_history(15, NOW), "k", NOW).record
    t = advance(record, seen_in_history(15, NOW + 60), "k", NOW + 60)
    assert not t.changed and t.record.updated_at == NOW


def test_a_second_copy_of_a_webhook_event_changes_only_its_copy_count() -> None:
    # Deliveries are deduplicated by id before they get here, so a second copy is a look-alike's
    # event or one sent again under a new id: kept, for history to tell (see TransferBook).
    record = advance(None, hook("deposit.accepted", deposit_params()), "k", NOW).record
    again = advance(record, hook("deposit.accepted", deposit_params()), "k", NOW + 60).record
    assert again.details["events"] == {"deposit.accepted|15|0|": 2}
    assert replace(again, details=record.details, updated_at=NOW) == record


def test_status_names_differ_by_method() -> None:
    assert status_name("deposit", 5) == "unconfirmed_by_user" and status_name("withdraw", 5) == "unconfirmed"
    assert status_name("withdraw", 15) == "pending" and status_name("deposit", 15) == "pending"
    assert status_name("deposit", 18) == "other" and status_name("withdraw", 18) == "partially_successful"
    assert "other" in IN_FLIGHT_STATUSES["deposit"] and "successful" not in IN_FLIGHT_STATUSES["withdraw"]


# -- what reconciliation compares, kept by the same state machine -------------------------------------


def seen_in_history(status: int, at: float, **overrides: Any) -> TransferObservation:
    return observation_from_history("main", {**deposit_params(status=status), "transactionId": "T-1", **overrides}, at)


def test_webhook_status_is_the_furthest_a_webhook_reported_and_history_leaves_it_alone() -> None:
    record = advance(None, hook("deposit.accepted", deposit_params()), "k", NOW).record
    assert record.webhook_status == 15 and "webhook_status" not in record.details
    record = advance(record, hook("deposit.processed", deposit_params(status=7)), "k", NOW + 1).record
    assert record.webhook_status == 7
    for late in ("deposit.accepted", "deposit.updated", "deposit.canceled"):  # a final one never changes
        assert advance(record, hook(late, deposit_params()), "k", NOW + 2).record.webhook_status == 7
    history_only = advance(None, seen_in_history(3, NOW), "k", NOW).record
    assert history_only.webhook_status is None
    assert advance(record, seen_in_history(15, NOW + 3), "k", NOW + 3).record.webhook_status == 7
    # A withdrawal moves on within a stage, never back to an earlier one.
    pending = advance(None, hook("withdraw.pending", withdraw_params(status=2)), "k", NOW).record
    unconfirmed = advance(pending, hook("withdraw.unconfirmed", withdraw_params()), "k", NOW + 1).record
    moved_on = advance(pending, hook("withdraw.pending", withdraw_params(status=12)), "k", NOW + 1).record
    assert (unconfirmed.webhook_status, moved_on.webhook_status) == (2, 12)


def test_history_records_when_it_first_showed_each_level_and_never_moves_it() -> None:
    record = advance(None, seen_in_history(15, 100.0), "k", 100.0).record
    assert (record.history_pending_at, record.history_final_at, record.history_waived) == (100.0, None, 0)
    again = advance(record, seen_in_history(15, 150.0), "k", 150.0)
    assert not again.changed and again.record.history_pending_at == 100.0
    record = advance(record, seen_in_history(3, 200.0), "k", 200.0).record
    assert (record.history_pending_at, record.history_final_at) == (100.0, 200.0)
    # A final status seen first marks the pending level too; a status without a webhook marks none.
    direct = advance(None, seen_in_history(7, 300.0), "k", 300.0).record
    assert (direct.history_pending_at, direct.history_final_at) == (300.0, 300.0)
    frozen = advance(None, seen_in_history(27, 300.0), "k", 300.0).record
    assert (frozen.history_pending_at, frozen.history_final_at) == (None, None)
    # Webhooks set no history level.
    hooked = advance(record, hook("deposit.processed", deposit_params()), "k", 400.0).record
    assert (hooked.history_pending_at, hooked.history_final_at) == (100.0, 200.0)
    assert PENDING_LEVEL < FINAL_LEVEL


def test_the_baseline_waives_the_levels_its_history_records_show() -> None:
    base = advance(None, seen_in_history(15, 100.0), "k", 100.0, baseline=True).record
    assert base.history_waived == PENDING_LEVEL and base.history_pending_at == 100.0
    later = advance(base, seen_in_history(3, 200.0), "k", 200.0).record
    assert later.history_waived == PENDING_LEVEL and later.history_final_at == 200.0
    assert advance(None, seen_in_history(27, 100.0), "k", 100.0, baseline=True).record.history_waived == 0
    assert advance(None, seen_in_history(3, 100.0), "k", 100.0, baseline=True).record.history_waived == FINAL_LEVEL
    with pytest.raises(ValueError, match="history observation"):
        advance(None, hook("deposit.accepted", deposit_params()), "k", NOW, baseline=True)


def test_a_first_sighting_in_history_alone_does_not_move_updated_at() -> None:
    # updated_at times the purge of final records; history's bookkeeping is no change of the transfer.
    record = advance(None, seen_in_history(15, 100.0), "k", 100.0).record
    unmarked = replace(record, history_pending_at=None)
    t = advance(unmarked, seen_in_history(15, 500.0), "k", 500.0)
    assert t.changed and t.record.history_pending_at == 500.0 and t.record.updated_at == 100.0


# -- the book: persisted records, lookups, metrics -----------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.db", clock=lambda: NOW) as s:
        yield s


def samples(book: TransferBook) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(TransferCollector(book))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in registry.collect() for s in family.samples}


def value(book: TransferBook, name: str, **labels: str) -> float | None:
    return samples(book).get((name, tuple(sorted(labels.items()))))


def test_history_finds_the_record_a_webhook_created(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    book.observe(hook("deposit.accepted", deposit_params()))
    t = book.observe(observation_from_history("main", history(3), NOW))
    assert t.previous is not None and t.counted_outcome == "successful"
    [record] = store.transfers("main")
    assert record.key.startswith("m:") and record.webhook_seen and record.history_seen
    assert record.details["transaction_id"] == "T-1"


def test_a_record_naming_another_transaction_id_is_another_transfer(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    book.observe(observation_from_history("main", history(15), NOW))
    book.observe(observation_from_history("main", history(15, transactionId="T-2"), NOW))
    # Alike in every field both views carry: two slots of one key, never one record.
    records = store.transfers("main")
    assert sorted(r.details["transaction_id"] for r in records) == ["T-1", "T-2"]
    [digest] = {r.key.rpartition(":")[0] for r in records}
    assert sorted(r.key for r in records) == [f"{digest}:0", f"{digest}:1"]


def test_a_webhook_after_history_finds_the_record_history_created(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    book.observe(observation_from_history("main", {**deposit_params(status=15), "transactionId": "T-1"}, NOW))
    t = book.observe(hook("deposit.processed", deposit_params()))
    assert t.previous is not None and t.counted_outcome == "successful"
    [record] = store.transfers("main")
    assert record.webhook_seen and record.history_seen and record.webhook_status == 3


def test_webhook_status_keeps_the_furthest_status_a_webhook_reported(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    book.observe(hook("deposit.processed", deposit_params()))
    book.observe(hook("deposit.accepted", deposit_params()))  # a late retry of an earlier event
    book.observe(observation_from_history("main", {**deposit_params(status=15), "transactionId": "T-1"}, NOW))
    [record] = store.transfers("main")
    assert record.webhook_status == 3


def test_metrics_show_in_flight_by_status_and_outcomes_by_asset_from_zero(store: StateStore) -> None:
    book = TransferBook(store, ["main", "other"], clock=lambda: NOW)
    assert value(book, "whitebit_transfers_in_flight", account="other", kind="withdraw", status="pending") == 0
    book.observe(hook("deposit.accepted", deposit_params()))
    book.observe(hook("withdraw.unconfirmed", withdraw_params()))
    assert value(book, "whitebit_transfers_in_flight", account="main", kind="deposit", status="pending") == 1
    assert value(book, "whitebit_transfers_in_flight", account="main", kind="withdraw", status="unconfirmed") == 1
    # The asset's outcome counters exist at 0 before the first outcome.
    assert (
        value(book, "whitebit_transfers_total", account="main", kind="deposit", outcome="successful", asset="USDT") == 0
    )
    assert value(book, "whitebit_deposits_awaiting_confirmations", account="main") == 1
    assert (
        value(book, "whitebit_transfers_oldest_in_flight_timestamp_seconds", account="main", kind="deposit")
        == 1_700_000_000
    )
    book.observe(hook("deposit.processed", deposit_params()))
    book.observe(hook("deposit.processed", deposit_params()))
    assert (
        value(book, "whitebit_transfers_total", account="main", kind="deposit", outcome="successful", asset="USDT") == 1
    )
    assert value(book, "whitebit_transfers_in_flight", account="main", kind="deposit", status="pending") == 0
    assert value(book, "whitebit_deposits_awaiting_confirmations", account="main") == 0
    assert value(book, "whitebit_transfers_oldest_in_flight_timestamp_seconds", account="main", kind="deposit") is None


def test_records_survive_a_restart_and_a_final_one_is_not_counted_again(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore.open(path) as first:
        book = TransferBook(first, ["main"], clock=lambda: NOW)
        book.observe(hook("deposit.accepted", deposit_params()))
        book.observe(hook("withdraw.successful", withdraw_params()))
    with StateStore.open(path) as second:
        book = TransferBook(second, ["main"], clock=lambda: NOW)
        assert [r.kind for r in book.in_flight()] == ["deposit"]
        assert value(book, "whitebit_transfers_in_flight", account="main", kind="deposit", status="pending") == 1
        t = book.observe(hook("withdraw.successful", withdraw_params()))
        assert t.counted_outcome is None
        assert (
            value(book, "whitebit_transfers_total", account="main", kind="withdraw", outcome="successful", asset="USDT")
            == 0
        )
        book.observe(hook("deposit.canceled", deposit_params()))
        assert (
            value(book, "whitebit_transfers_total", account="main", kind="deposit", outcome="canceled", asset="USDT")
            == 1
        )


def test_stage_writes_only_inside_the_callers_transaction(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    staged: list[TransferUpdate] = []

    def stage_then_fail() -> None:
        with store.transaction():
            staged.append(book.stage(hook("deposit.processed", deposit_params())))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        stage_then_fail()
    [update] = staged
    assert store.transfers() == [] and update.transition.counted_outcome == "successful"
    # Nothing was applied, so nothing is counted.
    assert (
        value(book, "whitebit_transfers_total", account="main", kind="deposit", outcome="successful", asset="USDT")
        is None
    )


def test_stage_passes_the_baseline_through_and_writes_the_record_once(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    writes = store._conn().total_changes  # white-box: every row SQLite wrote on this connection
    with store.transaction():
        update = book.stage(seen_in_history(15, NOW), baseline=True)
    assert store._conn().total_changes - writes == 1
    [record] = store.transfers()
    assert record == update.transition.record
    assert (record.history_pending_at, record.history_waived) == (NOW, PENDING_LEVEL)


def test_mark_missed_writes_the_counted_flag_once_in_the_callers_transaction(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    book.observe(seen_in_history(15, NOW))
    [record] = store.transfers()

    def mark_then_fail() -> None:
        with store.transaction():
            book.mark_missed(record)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        mark_then_fail()
    assert store.transfers() == [record]
    with store.transaction():
        marked = book.mark_missed(record)
    assert marked == replace(record, missed_counted=True) and store.transfers() == [marked]
    writes = store._conn().total_changes
    with store.transaction():
        assert book.mark_missed(marked) == marked
    assert store._conn().total_changes == writes


def test_amounts_are_kept_exact(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    book.observe(hook("deposit.accepted", deposit_params(amount="0.123456789012345678")))
    [record] = store.transfers()
    assert record.amount == Decimal("0.123456789012345678")


# -- the documented forms of the two views, through the book -------------------------------------------


def documented_deposit(method: str, **overrides: Any) -> dict[str, Any]:
    """A deposit webhook as WhiteBIT's examples show it: network-suffixed ticker, 18 decimals, no ids."""
    params = deposit_params(
        **{"ticker": "USDT_ETH", "network": "ERC20", "amount": "25.000000000000000000", **overrides}
    )
    if method == "deposit.updated":
        params.pop("method")
    return params


def documented_history(status: int, **overrides: Any) -> dict[str, Any]:
    """The same deposit as history shows it: plain ticker, the network, a short amount, a transactionId."""
    return history(status, **{"ticker": "USDT", "network": "ERC20", "amount": "25", **overrides})


def totals(book: TransferBook) -> dict[tuple[str, str, str], int]:
    return {(kind, outcome, asset): n for (_, kind, outcome, asset), n in book.totals().items() if n}


@pytest.mark.parametrize("history_first", [True, False])
def test_one_deposit_in_the_documented_forms_is_one_transfer_counted_once(
    store: StateStore, history_first: bool
) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    webhooks = [
        hook("deposit.accepted", documented_deposit("deposit.accepted")),
        hook("deposit.updated", documented_deposit("deposit.updated", confirmations={"actual": 2, "required": 3})),
        hook("deposit.processed", documented_deposit("deposit.processed")),
    ]
    polls = [observation_from_history("main", documented_history(s), NOW) for s in (15, 3)]
    for obs in [*polls, *webhooks] if history_first else [*webhooks, *polls]:
        book.observe(obs)
    [record] = store.transfers("main")
    assert (record.ticker, record.webhook_seen, record.history_seen, record.status) == ("USDT", True, True, 3)
    assert totals(book) == {("deposit", "successful", "USDT"): 1}
    # The asset label is the plain ticker: one series for USDT, not one for USDT_ETH as well.
    assert {asset for (_, _, _, asset) in book.totals()} == {"USDT"}


def test_a_canceled_deposit_with_a_null_network_matches_its_history(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    book.observe(observation_from_history("main", documented_history(9), NOW))
    book.observe(hook("deposit.canceled", documented_deposit("deposit.canceled", network=None, amount="25.00")))
    [record] = store.transfers("main")
    assert record.webhook_status == 4 and record.status == 9 and record.history_seen
    assert totals(book) == {("deposit", "canceled", "USDT"): 1}


def test_a_deposit_webhooks_unique_id_equal_to_a_transaction_id_picks_that_record(store: StateStore) -> None:
    # The payment guide: a deposit webhook's uniqueId is the deposit's transactionId.
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    for txid in ("T-A", "T-B"):
        book.observe(observation_from_history("main", documented_history(15, transactionId=txid), NOW))
    book.observe(hook("deposit.processed", documented_deposit("deposit.processed", uniqueId="T-B")))
    by_id = {r.details["transaction_id"]: r for r in store.transfers("main")}
    assert by_id["T-B"].webhook_status == 3 and not by_id["T-A"].webhook_seen


def test_withdrawals_with_different_unique_ids_are_never_joined(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    book.observe(hook("withdraw.unconfirmed", withdraw_params(uniqueId="payout-1")))
    other = {**withdraw_params(status=1), "uniqueId": "payout-2", "transactionId": "T-2"}
    book.observe(observation_from_history("main", other, NOW))
    assert sorted(r.details["unique_id"] for r in store.transfers("main")) == ["payout-1", "payout-2"]


def test_a_final_report_of_each_view_counts_once_in_either_order(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    t = book.observe(observation_from_history("main", documented_history(3), NOW))
    assert t.counted_outcome == "successful"
    t = book.observe(hook("deposit.processed", documented_deposit("deposit.processed")))
    assert t.counted_outcome is None and t.previous is not None
    assert totals(book) == {("deposit", "successful", "USDT"): 1}


def test_two_outputs_of_one_transaction_alike_in_everything_are_two_transfers(store: StateStore) -> None:
    # Both webhooks arrive before history tells the two apart: the second is kept as a copy, then
    # handed to the history record that has none, so both are counted and neither is missed.
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    for _ in range(2):
        book.observe(hook("deposit.accepted", documented_deposit("deposit.accepted")))
    [record] = store.transfers("main")
    assert record.details["events"] == {"deposit.accepted|15|0|": 2}
    for _ in range(2):
        book.observe(hook("deposit.processed", documented_deposit("deposit.processed")))
    assert totals(book) == {("deposit", "successful", "USDT"): 1}  # one transfer, as far as anyone can tell
    for txid in ("T-A", "T-B"):
        book.observe(observation_from_history("main", documented_history(3, transactionId=txid), NOW))
    records = store.transfers("main")
    assert len(records) == 2 and all(r.webhook_status == 3 and r.history_seen for r in records)
    assert all(sum(r.details["events"].values()) == 2 for r in records)
    assert totals(book) == {("deposit", "successful", "USDT"): 2}


def test_counting_pairs_reports_of_look_alikes_whatever_record_they_joined() -> None:
    def part(key: str, *, hook_outcome: int | None = None, history: str | None = None) -> TransferRecord:
        record = replace(record_of(hook("withdraw.pending", withdraw_params(uniqueId=None))), key=key)
        details = {**record.details, "history_outcome": history}
        return replace(record, webhook_status=hook_outcome if hook_outcome is not None else 1, details=details)

    # One look-alike's success came by webhook onto one record, history reported it on another.
    crossed = [part("a", hook_outcome=3), part("b", history="successful")]
    assert distinct_finals(crossed, "successful") == 1
    assert distinct_finals([*crossed, part("c", history="successful")], "successful") == 2
    # A webhook naming another uniqueId than the history record is another transfer.
    named = replace(crossed[0], details={**crossed[0].details, "webhook_final_ids": {"unique_id": "payout-9"}})
    held = replace(crossed[1], details={**crossed[1].details, "unique_id": "payout-1"})
    assert distinct_finals([named, held], "successful") == 2


# -- a state file written by an earlier version -----------------------------------------------------------

# The previous version's fingerprint keys for the deposit below, computed by that version's code: its
# webhook (USDT_ETH) and its history record (USDT) got two different keys, so they never met.
OLD = {"address": "0xAbC1", "transactionHash": "0xfeed"}
OLD_WEBHOOK_KEY = "fp:b7ced8c9d310d8d3dd02955be678e5b8"
OLD_HISTORY_KEY = "fp:65f76290ab6132bf02a746a8c4443fac"


def old_record(key: str, ticker: str, source: str, **changes: Any) -> TransferRecord:
    """A pending deposit row as the previous version stored it (its details held only these five fields)."""
    record = TransferRecord(
        account="main",
        kind="deposit",
        key=key,
        status=15,
        status_name="pending",
        ticker=ticker,
        amount=Decimal("25"),
        created_at=1_700_000_000.0,
        updated_at=NOW - 60,
        webhook_seen=source == "webhook",
        history_seen=source == "history",
        webhook_status=15 if source == "webhook" else None,
        history_pending_at=NOW - 60 if source == "history" else None,
        details={
            "transaction_id": None if source == "webhook" else "T-OLD",
            "unique_id": None,
            "transaction_hash": OLD["transactionHash"],
            "network": "ERC20",
            "last_event": "deposit.accepted" if source == "webhook" else "history:15",
        },
    )
    return replace(record, **changes)


def write_old_state(path: Path, *records: TransferRecord) -> None:
    with StateStore.open(path) as old:
        assert old.schema_version == len(MIGRATIONS)  # no migration: the rows stay as they were
        for record in records:
            old.put_transfer(record)


def test_the_previous_fingerprint_is_reproduced_exactly() -> None:
    webhook = hook("deposit.accepted", documented_deposit("deposit.accepted", **OLD))
    assert legacy_fingerprint(webhook, webhook.ticker) == OLD_WEBHOOK_KEY
    record = observation_from_history("main", documented_history(15, transactionId="T-OLD", **OLD), NOW)
    assert legacy_fingerprint(record, record.ticker) == OLD_HISTORY_KEY


def test_a_webhook_only_record_of_the_previous_version_is_found_by_its_history_and_webhooks(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    write_old_state(path, old_record(OLD_WEBHOOK_KEY, "USDT_ETH", "webhook"))
    with StateStore.open(path) as store:
        book = TransferBook(store, ["main"], clock=lambda: NOW)
        # History names it USDT: found by asset and amount, not split into a second transfer.
        book.observe(observation_from_history("main", documented_history(15, transactionId="T-OLD", **OLD), NOW))
        # Its next webhook and history's final status find it under its old key.
        book.observe(hook("deposit.processed", documented_deposit("deposit.processed", **OLD)))
        book.observe(observation_from_history("main", documented_history(3, transactionId="T-OLD", **OLD), NOW))
        [record] = store.transfers("main")
        assert record.key == OLD_WEBHOOK_KEY and record.history_seen and record.webhook_status == 3
        assert totals(book) == {("deposit", "successful", "USDT"): 1}
        # Its old ticker form shows under the plain asset, like every new record.
        assert {asset for (_, _, _, asset) in book.totals()} == {"USDT"}


def test_history_records_of_the_previous_version_are_found_by_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    by_id = old_record("txid:T-ID", "USDT", "history", amount=Decimal("7"))
    by_id = replace(by_id, details={**by_id.details, "transaction_id": "T-ID"})
    write_old_state(path, old_record(OLD_HISTORY_KEY, "USDT", "history"), by_id)
    with StateStore.open(path) as store:
        book = TransferBook(store, ["main"], clock=lambda: NOW)
        # The webhook names USDT_ETH; the previous version stored the record under history's USDT.
        book.observe(hook("deposit.processed", documented_deposit("deposit.processed", **OLD)))
        book.observe(observation_from_history("main", documented_history(3, transactionId="T-OLD", **OLD), NOW))
        # A record the previous version stored under its transactionId is found by it.
        moved = documented_history(3, transactionId="T-ID", amount="7", **OLD)
        book.observe(observation_from_history("main", moved, NOW))
        records = {r.key: r for r in store.transfers("main")}
        assert set(records) == {OLD_HISTORY_KEY, "txid:T-ID"}
        assert records[OLD_HISTORY_KEY].webhook_status == 3 and records[OLD_HISTORY_KEY].final
        assert records["txid:T-ID"].final
        assert totals(book) == {("deposit", "successful", "USDT"): 2}


@pytest.mark.parametrize(
    ("method", "fields"),
    [
        (
            "deposit.processed",
            {"ticker": "usdt_eth", "amount": "25.000000000000000000", "address": " 0xAbC ", "memo": None},
        ),
        ("withdraw.pending", {"ticker": "BTC", "amount": "0.5", "address": "bc1q", "memo": " tag-7 "}),
        ("deposit.accepted", {"ticker": "XRP", "amount": "10", "address": "", "memo": ""}),
    ],
)
def test_a_record_keeps_the_key_fields_of_the_observation_it_was_created_from(method: str, fields: dict) -> None:
    # The book's fast path for a first sighting relies on this: a record's key fields, recomputed
    # from what it stores, are those its key was hashed from.
    params = {"createdAt": 1_700_000_000, "status": 15, "method": 1 if method.startswith("deposit") else 2, **fields}
    obs = observation_from_webhook("main", method, params, 1_700_000_100.0)
    record = advance(None, obs, "m:x:0", 1_700_000_100.0).record
    assert record_key_fields(record) == key_fields(obs)
