"""One HTTP delivery attempt, shared by the WhiteBIT and Zero Hash webhook senders."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


async def post_once(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    trace_request_ctx: Any = None,
) -> int | None:
    """POST ``body`` once; the HTTP status, or None when no answer came (timeout, connection error).

    Redirects are not followed: a webhook endpoint that answers 3xx has not accepted the delivery.
    """
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
            trace_request_ctx=trace_request_ctx,
        ) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        log.debug("delivery attempt got no answer url=%s error=%s", url, type(error).__name__)
        return None
