"""The transfer lifecycle: keys, statuses per method, never backwards, each outcome counted once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from exporter.core.state import StateStore
from exporter.whitebit.transfers import (
    FINAL_LEVEL,
    IN_FLIGHT_STATUSES,
    PENDING_LEVEL,
    ObservationError,
    TransferBook,
    TransferCollector,
    TransferObservation,
    TransferUpdate,
    advance,
    candidate_keys,
    fingerprint,
    observation_from_history,
    observation_from_webhook,
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


# -- keys -----------------------------------------------------------------------------------------


def test_keys_prefer_transaction_id_then_unique_id_then_fingerprint() -> None:
    obs = observation_from_history(
        "main", {"method": 2, "status": 1, "ticker": "USDT", "amount": "1", "transactionId": "T", "uniqueId": "U"}, NOW
    )
    keys = candidate_keys(obs)
    assert keys[:2] == ["txid:T", "uid:U"] and keys[2].startswith("fp:")
    assert candidate_keys(hook("withdraw.pending", withdraw_params()))[0] == "uid:payout-1"
    assert candidate_keys(hook("deposit.accepted", deposit_params()))[0].startswith("fp:")


def test_fingerprint_ignores_amount_formatting_network_and_status() -> None:
    a = hook("deposit.accepted", deposit_params())
    b = hook("deposit.canceled", deposit_params(amount="10.5", network=None, status=4, confirmations=None))
    assert fingerprint(a) == fingerprint(b)


def test_one_transaction_hash_paying_two_addresses_is_two_deposits() -> None:
    a = hook("deposit.accepted", deposit_params(address="A1"))
    b = hook("deposit.accepted", deposit_params(address="A2"))
    assert fingerprint(a) != fingerprint(b)


def test_withdrawal_fingerprint_survives_its_hash_appearing() -> None:
    params = withdraw_params(uniqueId=None)
    assert fingerprint(hook("withdraw.unconfirmed", params)) == fingerprint(
        hook("withdraw.pending", {**params, "transactionHash": "0xabc"})
    )


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
    record = advance(None, hook("deposit.accepted", deposit_params()), "k", NOW).record
    t = advance(record, hook("deposit.accepted", deposit_params()), "k", NOW + 60)
    assert not t.changed and t.record.updated_at == NOW


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


def test_history_finds_the_record_a_webhook_created_under_its_fingerprint(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    book.observe(hook("deposit.accepted", deposit_params()))
    history = {**deposit_params(amount="10.5", status=3), "transactionId": "T-1"}
    t = book.observe(observation_from_history("main", history, NOW))
    assert t.previous is not None and t.counted_outcome == "successful"
    [record] = store.transfers("main")
    assert record.key.startswith("fp:") and record.webhook_seen and record.history_seen
    assert record.details["transaction_id"] == "T-1"


def test_a_record_naming_another_transaction_id_is_another_transfer(store: StateStore) -> None:
    book = TransferBook(store, ["main"], clock=lambda: NOW)
    base = {**deposit_params(status=15), "transactionId": "T-1"}
    book.observe(observation_from_history("main", base, NOW))
    book.observe(observation_from_history("main", {**base, "transactionId": "T-2"}, NOW))
    # The first is stored under its fingerprint (free), the second, with the same fingerprint, under its id.
    records = store.transfers("main")
    assert sorted(r.details["transaction_id"] for r in records) == ["T-1", "T-2"]
    assert sorted(r.key.split(":")[0] for r in records) == ["fp", "txid"]


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
