"""The pure pieces of a snapshot read: the paging rule (MarketPaging) and the merge of records and pushes."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from exporter.whitebit.websocket.orders import OrderBook, OrderEvents, SnapshotMerge
from exporter.whitebit.websocket.parsing import InvalidMessage
from exporter.whitebit.websocket.snapshot import MIN_REQUESTS, MarketPaging, PagingFailed
from tests.whitebit.websocket.book import open_ids

# --- MarketPaging ---------------------------------------------------------------------------------


def read_all(listing: list[int], limit: int, *, between: Any = None) -> MarketPaging:
    """Page ``listing`` (mutated by ``between(paging)`` before each page) until done."""
    paging = MarketPaging("BTC_USDT", limit)
    while not paging.done:
        if between is not None:
            between(paging)
        offset = paging.offset
        paging.on_page(offset, listing[offset : offset + limit], len(listing))
    return paging


@pytest.mark.parametrize("newest_first", [True, False])
def test_a_still_list_is_read_with_one_record_of_overlap(newest_first: bool) -> None:
    listing = sorted(range(1, 11), reverse=newest_first)
    offsets: list[int] = []
    paging = read_all(listing, 4, between=lambda p: offsets.append(p.offset))
    assert offsets == [0, 3, 6, 9]
    assert paging.gaps == 0


def test_a_short_first_page_is_the_whole_list_whatever_its_order() -> None:
    paging = MarketPaging("BTC_USDT", 5)
    paging.on_page(0, [3, 9, 1], 3)  # not sorted, but complete: nothing to page
    assert paging.done


def test_an_empty_list_is_done_at_once() -> None:
    paging = MarketPaging("BTC_USDT", 5)
    paging.on_page(0, [], 0)
    assert paging.done and paging.requests == 1


@pytest.mark.parametrize("newest_first", [True, False])
def test_orders_finishing_before_the_cursor_make_the_page_step_back_until_it_reaches_back(newest_first: bool) -> None:
    listing = sorted(range(1, 21), reverse=newest_first)
    paging = MarketPaging("BTC_USDT", 5)
    paging.on_page(0, listing[0:5], 20)
    assert paging.offset == 4
    # Three orders of the first page finish: the list moves up by three, the page at 4 skips ahead.
    for order_id in listing[0:3]:
        listing.remove(order_id)
    paging.on_page(4, listing[4:9], len(listing))
    assert paging.gaps == 1 and paging.offset < 4
    while not paging.done:
        offset = paging.offset
        paging.on_page(offset, listing[offset : offset + 5], len(listing))
    assert paging.gaps >= 1


def test_new_orders_at_the_head_of_a_newest_first_list_only_add_overlap() -> None:
    listing = list(range(100, 80, -1))
    paging = MarketPaging("BTC_USDT", 5)
    seen: set[int] = set()
    next_id = 101
    while not paging.done:
        offset = paging.offset
        page = listing[offset : offset + 5]
        seen.update(page)
        paging.on_page(offset, page, len(listing))
        listing.insert(0, next_id)  # a new order after every page
        next_id += 1
    assert paging.gaps == 0
    assert set(range(81, 101)) <= seen  # every order that was there all along was read


def test_a_page_whose_total_does_not_add_up_is_not_relied_on() -> None:
    paging = MarketPaging("BTC_USDT", 3)
    paging.on_page(0, [1, 2, 3], 5)
    paging.on_page(2, [3, 4], 7)  # short, so it should end the list, but total says 7
    assert not paging.done and paging.gaps == 1
    offset = paging.offset
    paging.on_page(offset, [1, 2, 3, 4, 5][offset : offset + 3], 5)
    while not paging.done:
        offset = paging.offset
        paging.on_page(offset, [1, 2, 3, 4, 5][offset : offset + 3], 5)


def test_a_listing_not_in_id_order_fails() -> None:
    paging = MarketPaging("BTC_USDT", 3)
    with pytest.raises(PagingFailed, match="not listed in order of their ids"):
        paging.on_page(0, [5, 1, 9], 10)
    paging = MarketPaging("BTC_USDT", 3)
    paging.on_page(0, [1, 2, 3], 10)
    with pytest.raises(PagingFailed, match="not listed in order"):
        paging.on_page(2, [9, 8, 7], 10)  # the other direction on a later page


def test_more_records_than_the_limit_fail() -> None:
    with pytest.raises(PagingFailed, match="more than 2"):
        MarketPaging("BTC_USDT", 2).on_page(0, [1, 2, 3], 3)


def test_a_list_that_never_holds_still_fails_within_the_budget() -> None:
    paging = MarketPaging("BTC_USDT", 4)
    paging.on_page(0, [1, 2, 3, 4], 40)

    def keep_paging() -> None:
        # Pages that never end in a short one agreeing with the total: the read can never finish.
        for _ in range(1000):
            paging.on_page(paging.offset, [50, 51, 52, 53], 40)

    with pytest.raises(PagingFailed, match="kept changing while being read"):
        keep_paging()
    assert paging.requests <= MIN_REQUESTS + 3 * 14


def test_a_page_limit_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at least two"):
        MarketPaging("BTC_USDT", 1)


def test_a_page_that_was_not_asked_for_is_a_bug() -> None:
    paging = MarketPaging("BTC_USDT", 3)
    with pytest.raises(RuntimeError):
        paging.on_page(5, [1], 1)


# --- SnapshotMerge --------------------------------------------------------------------------------


def order(
    order_id: int,
    *,
    left: str = "1",
    type_: int = 1,
    ctime: float = 100.0,
    mtime: float | None = None,
    coid: str = "",
    status: str = "OPEN",
) -> dict[str, Any]:
    return {
        "id": order_id,
        "market": "BTC_USDT",
        "side": 2,
        "type": type_,
        "left": left,
        "ctime": ctime,
        "mtime": ctime if mtime is None else mtime,
        "client_order_id": coid,
        "status": status,
    }


def merge() -> SnapshotMerge:
    markets = ("BTC_USDT",)
    return SnapshotMerge(OrderBook(markets, OrderEvents(markets, clock=lambda: 0.0)))


def counts(m: SnapshotMerge) -> dict[str, int]:
    m.book.events.flush(float("inf"))
    return {event: n for (_, event), n in m.book.events.counts().items() if n}


def left_of(m: SnapshotMerge) -> D:
    return sum((v for _, _, v in m.book.series_values()[1]), D(0))


def test_a_record_older_than_a_push_does_not_undo_it() -> None:
    m = merge()
    m.push(2, order(1, left="0.4", mtime=105.0))
    m.record(order(1, left="1", mtime=100.0))  # computed before the fill, arrived after it
    assert left_of(m) == D("0.4")
    m.record(order(1, left="0.1", mtime=107.0))  # a later fill the push has not told yet
    assert left_of(m) == D("0.1")
    assert counts(m) == {"update": 1}


def test_a_push_older_than_the_record_counts_but_does_not_undo_it() -> None:
    m = merge()
    m.record(order(1, left="0.1", mtime=107.0))
    m.push(2, order(1, left="0.4", mtime=105.0))
    assert left_of(m) == D("0.1")
    m.push(2, order(1, left="0.05", mtime=109.0))
    assert left_of(m) == D("0.05")
    assert counts(m) == {"update": 2}


def test_with_equal_times_the_smaller_left_is_the_later_state() -> None:
    m = merge()
    m.record(order(1, left="0.3", mtime=105.0))
    m.push(2, order(1, left="0.5", mtime=105.0))
    assert left_of(m) == D("0.3")


def test_a_finished_order_never_comes_back_from_a_late_page() -> None:
    m = merge()
    m.push(3, order(1, left="0", status="FILLED", mtime=110.0))
    m.record(order(1, left="1", mtime=100.0))
    assert open_ids(m.book) == set()
    assert counts(m) == {"finish": 1}


def test_a_new_order_seen_in_a_page_and_then_pushed_is_one_new() -> None:
    m = merge()
    m.record(order(7))
    assert m.push(1, order(7)) == "new"
    assert open_ids(m.book) == {7}
    assert counts(m) == {"new": 1}


def test_a_stop_order_seen_in_a_page_is_new_when_its_creation_arrives_late() -> None:
    m = merge()
    m.record(order(8, type_=3))
    assert m.push(1, order(8, type_=3)) == "new"  # mtime == ctime: its creation
    assert m.push(1, order(8, type_=3, mtime=150.0)) == "stop_activated"  # now a push was seen
    assert counts(m) == {"new": 1, "stop_activated": 1}


def test_a_stop_order_known_only_from_a_page_is_activated_by_a_later_new() -> None:
    m = merge()
    m.record(order(9, type_=4, mtime=100.0))
    assert m.push(1, order(9, type_=4, mtime=140.0)) == "stop_activated"
    assert open_ids(m.book) == {9}


def test_an_activation_before_the_page_that_lists_the_stop_order_is_still_an_activation() -> None:
    m = merge()
    assert m.push(1, order(10, type_=9, mtime=140.0)) == "stop_activated"
    m.record(order(10, type_=9, mtime=100.0))
    assert counts(m) == {"stop_activated": 1}
    assert open_ids(m.book) == {10}


def test_without_times_a_repeated_new_follows_the_documented_id_rule() -> None:
    m = merge()
    record = order(11, type_=3)
    del record["ctime"], record["mtime"]
    m.record(record)
    assert m.push(1, record) == "stop_activated"
    assert m.push(1, {**record, "id": 12}) == "new"


def test_modify_halves_pair_through_the_merge() -> None:
    m = merge()
    m.record(order(1, coid="bot"))
    m.push(3, order(1, coid="bot", status="CANCELED"))
    m.push(1, order(2, coid="bot", ctime=120.0))
    assert counts(m) == {"modify": 1}
    assert m.finishes == {"BTC_USDT": 1}


def test_bad_pushes_and_records_are_refused_with_the_state_untouched() -> None:
    m = merge()
    m.record(order(1))
    with pytest.raises(InvalidMessage):
        m.push(9, order(1, left="0.5"))
    with pytest.raises(InvalidMessage):
        m.record({"id": 2})
    assert left_of(m) == D(1) and open_ids(m.book) == {1}
