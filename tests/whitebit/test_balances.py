"""AccountBalances and its collector: per-asset updates, snapshots, stale writes, rendering."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.whitebit.balances import AccountBalances, BalancesCollector
from tests.helpers import Scrape


def render(*accounts: AccountBalances) -> Scrape:
    registry = CollectorRegistry()
    registry.register(BalancesCollector(accounts))
    return Scrape(generate_latest(registry).decode())


def test_spot_update_with_one_asset_keeps_the_others() -> None:
    b = AccountBalances("main")
    b.replace_spot({"USDT": (D(100), D(5)), "BTC": (D(2), D(0))}, 10.0)
    b.update_spot({"USDT": (D("90.5"), D("14.5"))}, 11.0)
    assert b.spot() == {"USDT": (D("90.5"), D("14.5")), "BTC": (D(2), D(0))}
    result = render(b)
    assert result.value("whitebit_balance", account="main", wallet="spot", asset="USDT") == 105.0
    assert result.value("whitebit_balance_frozen", account="main", asset="USDT") == 14.5
    assert result.value("whitebit_balance", account="main", wallet="spot", asset="BTC") == 2.0
    assert (
        result.value(
            "whitebit_balance_last_update_timestamp_seconds",
            account="main",
            wallet="spot",
        )
        == 11.0
    )


def test_collateral_renders_balance_and_borrowed() -> None:
    b = AccountBalances("main")
    b.replace_collateral({"USDT": (D(120), D(0))}, 5.0)
    b.update_collateral({"BTC": (D("0.5"), D("0.1"))}, 6.0)
    result = render(b)
    assert result.value("whitebit_balance", account="main", wallet="collateral", asset="USDT") == 120.0
    assert result.value("whitebit_balance", account="main", wallet="collateral", asset="BTC") == 0.5
    assert result.value("whitebit_collateral_borrowed", account="main", asset="BTC") == 0.1


def test_a_write_older_than_the_last_update_is_refused() -> None:
    b = AccountBalances("main")
    assert b.update_spot({"USDT": (D(1), D(0))}, 20.0)
    assert not b.replace_spot({"USDT": (D(999), D(0))}, 19.0)
    assert b.spot() == {"USDT": (D(1), D(0))}
    assert b.updated_at("spot") == 20.0


def test_replace_wallet_sets_main_and_collateral_totals_and_refuses_spot() -> None:
    b = AccountBalances("main")
    b.replace_wallet("main", {"USDT": D(25000)}, 1.0)
    b.replace_wallet("main", {"BTC": D("1.5")}, 2.0)
    # USDT was left out: WhiteBIT leaves out zero balances, so it is exported at 0, not dropped.
    assert b.main() == {"BTC": D("1.5"), "USDT": D(0)}
    b.update_collateral({"USDT": (D(10), D(3))}, 3.0)
    b.replace_wallet("collateral", {"USDT": D(12)}, 4.0)
    assert b.collateral() == {"USDT": (D(12), D(3))}
    with pytest.raises(ValueError, match="replace_spot"):
        b.replace_wallet("spot", {"USDT": D(1)}, 5.0)
    with pytest.raises(ValueError, match="unknown wallet"):
        b.replace_wallet("savings", {}, 5.0)


def test_one_collector_renders_every_account_once() -> None:
    a, c = AccountBalances("a"), AccountBalances("c")
    a.replace_wallet("main", {"USDT": D(1)}, 1.0)
    c.replace_wallet("main", {"USDT": D(2)}, 1.0)
    result = render(a, c)
    assert result.value("whitebit_balance", account="a", wallet="main", asset="USDT") == 1.0
    assert result.value("whitebit_balance", account="c", wallet="main", asset="USDT") == 2.0
    assert result.text.count("# TYPE whitebit_balance gauge") == 1
    collector = BalancesCollector([a])
    with pytest.raises(ValueError, match="already collected"):
        collector.add(AccountBalances("a"))


def test_nothing_is_rendered_before_the_first_update() -> None:
    result = render(AccountBalances("main"))
    assert result.samples("whitebit_balance") == []
    assert result.samples("whitebit_balance_last_update_timestamp_seconds") == []


def test_an_asset_is_exported_once_it_held_something_and_stays_at_zero_after() -> None:
    b = AccountBalances("main")
    listed = {f"COIN{n:03}": D(0) for n in range(300)}
    b.replace_wallet("main", {**listed, "USDT": D(5)}, 1.0)
    b.replace_spot({"USDT": (D(0), D(0)), "BTC": (D(1), D(0))}, 1.0)
    b.replace_collateral({"USDT": (D(0), D(0))}, 1.0)
    assert b.main() == {"USDT": D(5)}  # 300 zero assets add no series
    assert b.spot() == {"BTC": (D(1), D(0))}
    assert b.collateral() == {}
    b.replace_wallet("main", {**listed, "USDT": D(0)}, 2.0)
    b.update_spot({"BTC": (D(0), D(0))}, 2.0)
    b.update_collateral({"USDT": (D(0), D(2))}, 2.0)  # borrowed only: held something
    assert b.main() == {"USDT": D(0)}
    assert b.spot() == {"BTC": (D(0), D(0))}
    assert b.collateral() == {"USDT": (D(0), D(2))}
    result = render(b)
    assert result.value("whitebit_balance", account="main", wallet="main", asset="USDT") == 0.0
    assert result.value("whitebit_balance", account="main", wallet="main", asset="COIN001") is None


def test_an_allow_list_exports_exactly_its_assets_once_the_wallet_answered() -> None:
    b = AccountBalances("main", assets=["USDT", "EUR"])
    assert b.main() == {}  # nothing said yet: no 0 that a low-balance alert could fire on
    b.replace_wallet("main", {"USDT": D(7), "BTC": D(1), "ETH": D(0)}, 1.0)
    assert b.main() == {"EUR": D(0), "USDT": D(7)}
    b.replace_spot({"BTC": (D(1), D(0))}, 1.0)
    assert b.spot() == {"EUR": (D(0), D(0)), "USDT": (D(0), D(0))}
    assert b.collateral() == {}


def test_confirm_advances_freshness_without_touching_values_and_needs_a_first_answer() -> None:
    b = AccountBalances("main", watching_since=5.0)
    assert not b.confirm("spot", 6.0)  # nothing to vouch for before the first answer
    assert b.current_as_of("spot") == 5.0 and b.updated_at("spot") is None
    b.replace_spot({"USDT": (D(100), D(0))}, 10.0)
    assert b.confirm("spot", 40.0)
    assert b.confirm("spot", 30.0)  # an older confirmation is harmless and changes nothing
    assert b.current_as_of("spot") == 40.0
    assert b.spot() == {"USDT": (D(100), D(0))}
    assert not b.update_spot({"USDT": (D(1), D(0))}, 35.0)  # a push older than the confirmation is stale


def test_every_wallet_is_rendered_from_watching_since_until_its_first_answer() -> None:
    # A wallet that never answers must still have a freshness series, or no stale alert could fire.
    b = AccountBalances("main", watching_since=5.0)
    result = render(b)
    assert {
        labels["wallet"]: value for labels, value in result.samples("whitebit_balance_last_update_timestamp_seconds")
    } == {"main": 5.0, "spot": 5.0, "collateral": 5.0}
    assert result.samples("whitebit_balance") == []
    b.replace_wallet("main", {"BTC": D(1)}, 9.0)
    result = render(b)
    assert result.value("whitebit_balance_last_update_timestamp_seconds", account="main", wallet="main") == 9.0
    assert result.value("whitebit_balance_last_update_timestamp_seconds", account="main", wallet="spot") == 5.0
