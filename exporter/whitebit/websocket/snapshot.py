"""Paging one market's open orders while the list changes: which offset to ask for next, and when the
pages read so far are known to cover every order that stayed open.

Pure: :class:`MarketPaging` is told what each ``ordersPending_request`` page held and decides the
next offset; the connection (``source.py``) sends the requests, and the module docstring there has
the argument why the pages and the pushes together give the truth.

The rule, in short. A page is a contiguous slice of the market's open orders, sorted by id (oldest
or newest first: WhiteBIT documents neither, docs/protocol.md#open-order-listing), as they were when
the page was computed. The first page starts at offset 0, so it covers everything from the head of
the list to its last id. Each next page is asked for so that it should start at the previous page's
last record (one record of overlap, more when finishes were seen meanwhile), and it is accepted only
if its first id is at or before that record in the list's order: then no order that stayed open can
lie between the two pages. A page that does not reach back (orders before it finished and the list
moved up, or the list got shorter than the offset) is not relied on, and the offset steps back,
twice as far each time, until a page does. A short page ends the list. Each page's ``total`` must
agree with it: at least ``offset + records`` for a full page, exactly that for the last one.
Requests are bounded (:data:`MIN_REQUESTS` plus three per page the list needs); past that the read
fails and the caller retries it later, on the same connection.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

#: Requests a market's read may always make, on top of three per page its ``total`` needs.
MIN_REQUESTS = 8


class PagingFailed(Exception):
    """The pages cannot be shown to cover the market; the message says why (no secrets)."""


def _direction(ids: Sequence[int]) -> int | None:
    """+1 for ids strictly rising, -1 for strictly falling, 0 with fewer than two, None otherwise."""
    if len(ids) < 2:
        return 0
    if all(a < b for a, b in itertools.pairwise(ids)):
        return 1
    if all(a > b for a, b in itertools.pairwise(ids)):
        return -1
    return None


class MarketPaging:
    """The read of one market's open orders in progress: ask for :attr:`offset` until :attr:`done`.

    After each page, :meth:`on_page` gets its offset, the ids of its records in the order listed,
    its ``total`` (None when absent) and ``moved``: the finishes of this market seen since the
    request was sent (a hint of how far the list moved up). It raises :class:`PagingFailed` when the
    listing is not in id order or the request budget is spent.
    """

    def __init__(self, market: str, limit: int) -> None:
        if limit < 2:
            raise ValueError("a page must hold at least two records to overlap the one before it")
        self.market = market
        self.limit = limit
        #: The offset to ask for next.
        self.offset = 0
        #: True once the pages cover the whole list.
        self.done = False
        #: Pages read, and those not relied on because they did not reach back to the one before.
        self.requests = 0
        self.gaps = 0
        self._direction = 0  # +1 oldest first, -1 newest first, 0 not known yet
        self._boundary: int | None = None  # last id of the last page relied on
        self._step = 1
        self._budget = MIN_REQUESTS
        self._problem = ""

    def on_page(self, offset: int, ids: Sequence[int], total: int | None, moved: int = 0) -> None:
        """Take the page read at ``offset``; sets the next :attr:`offset` or :attr:`done`."""
        if self.done or offset != self.offset:
            raise RuntimeError(f"page at offset {offset} was not asked for")
        self.requests += 1
        limit = self.limit
        count = len(ids)
        if count > limit:
            raise PagingFailed(f"open orders of {self.market}: a page held {count} records, more than {limit}")
        full = count == limit
        if full or offset > 0:
            direction = _direction(ids)
            if direction is None or (direction and self._direction and direction != self._direction):
                raise PagingFailed(f"open orders of {self.market} are not listed in order of their ids")
            self._direction = direction or self._direction
        if total is not None:
            self._budget = max(self._budget, MIN_REQUESTS + 3 * math.ceil(total / (limit - 1)))
        reaches_back = offset == 0 or (
            count > 0
            and self._boundary is not None
            and self._direction != 0
            and (ids[0] - self._boundary) * self._direction <= 0
        )
        adds_up = total is None or (total >= offset + count if full else total == offset + count)
        if reaches_back and adds_up:
            self._step = 1
            if not full:
                self.done = True
                return
            self._boundary = ids[-1]
            self.offset = offset + count - min(1 + moved, max(1, limit // 2))
        else:
            self.gaps += 1
            self._problem = (
                f"a page's total {total} does not match its offset {offset} and {count} records"
                if reaches_back
                else "a page did not reach back to the one before it"
            )
            back = max(self._step, 1 + moved)
            self.offset = max(0, offset - back)
            self._step = min(2 * back, limit - 1)
        if self.requests >= self._budget:
            raise PagingFailed(
                f"open orders of {self.market} kept changing while being read "
                f"({self.requests} pages; last: {self._problem or 'not finished'})"
            )
