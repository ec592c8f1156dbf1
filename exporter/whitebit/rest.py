"""The signed WhiteBIT REST client: one :class:`RestClient` per account over one shared transport.

Every private call is a POST whose body carries ``request`` and a millisecond ``nonce`` and is
signed once and sent byte for byte as signed (:func:`exporter.whitebit.signing.sign_request`).

Nonces. With ``nonceWindow`` (the default) WhiteBIT accepts any unused millisecond timestamp within
5 s of its clock, so concurrent calls of one key are safe as long as each gets its own value:
:class:`~exporter.whitebit.signing.NonceSource` hands out strictly increasing ones, taken only after
the rate limiter has admitted the request, so a wait never ages a nonce. Without ``nonceWindow``
WhiteBIT wants every nonce above the last one it *received*, and two requests in flight on two
connections can arrive in either order; the client then holds a per-key lock from taking the nonce
until the answer, so one key has one request in flight. Every retry is signed again with a new nonce.

Errors. WhiteBIT's error bodies are mapped to :class:`RestError` subclasses by HTTP status and
message, treating the body's ``code`` as a hint only because codes are reused across endpoints
(docs/protocol.md#rest-errors): :class:`AuthError`, :class:`PermissionDeniedError`, :class:`ValidationError`,
:class:`NonceError`, :class:`RateLimitedError`, :class:`UnavailableError` and
:class:`ResponseError` (a success answer that is not what the endpoint documents); an attempt that
got no answer at all is a :class:`NoAnswerError`, whose reason names the cause in plain words
(:func:`exporter.core.errors.error_text`: ``connection refused (127.0.0.1:9)``, ``timed out after
10s (whitebit.com:443)``). Only 429, 5xx and network failures are retried, after delays from
``backoff`` (:class:`~exporter.core.backoff.Backoff`: 1 s doubling to 30 s, each cut by up to 20 % at
random), at most ``max_retries`` times; then the last error is raised. Each retry is logged at
debug level only: the caller's outage log (:mod:`exporter.core.outage`) says what an operator needs,
and a client made for one source by :meth:`RestClient.observed` tells it of each failed attempt
before the retry. A 429 also pauses the whole endpoint family in the shared limiter for the backoff,
since the limit it signals belongs to the IP, not to the caller.

Metrics (one :class:`RestMetrics` collector per exporter, every account): each attempt is counted in
``whitebit_rest_requests_total{account,endpoint,code}`` (``code`` is the HTTP status, or ``error``
when no answer came) and timed in ``whitebit_rest_request_duration_seconds`` (the HTTP exchange only,
not the wait for a rate-limit slot or a backoff); 429s are also counted in
``whitebit_rest_rate_limited_total``; ``whitebit_rest_rate_limit_usage_ratio`` is this account's
requests to the endpoint in the family's current window divided by the family's limit, so summing
over accounts and over the endpoints of a family gives the IP's usage of that limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.core import (
    Metric,
)
from prometheus_client.registry import Collector

from exporter.config.schema import DEFAULT_DURATION_BUCKETS, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from exporter.core.backoff import DEFAULT_BACKOFF, Backoff
from exporter.core.errors import error_text
from exporter.core.logs import redact
from exporter.core.metrics import (
    WHITEBIT_REST_RATE_LIMIT_USAGE_RATIO,
    WHITEBIT_REST_RATE_LIMITED,
    WHITEBIT_REST_REQUEST_DURATION_SECONDS,
    WHITEBIT_REST_REQUESTS,
)
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.signing import NonceSource, sign_request

log = logging.getLogger(__name__)

# The documented endpoints the exporter calls (history: by the reconciliation poller; the public ones
# unsigned); the `endpoint` label takes these values only.
MAIN_BALANCE = "/api/v4/main-account/balance"
MAIN_HISTORY = "/api/v4/main-account/history"
TRADE_BALANCE = "/api/v4/trade-account/balance"
COLLATERAL_BALANCE_SUMMARY = "/api/v4/collateral-account/balance-summary"
COLLATERAL_SUMMARY = "/api/v4/collateral-account/summary"
WEBSOCKET_TOKEN = "/api/v4/profile/websocket_token"
#: Public, unsigned: WhiteBIT's clock (see exporter.whitebit.clock).
PUBLIC_TIME = "/api/v4/public/time"
#: Public, unsigned: the last price of every market (see exporter.whitebit.prices).
PUBLIC_TICKER = "/api/v4/public/ticker"
ENDPOINTS: tuple[str, ...] = (
    MAIN_BALANCE,
    MAIN_HISTORY,
    TRADE_BALANCE,
    COLLATERAL_BALANCE_SUMMARY,
    COLLATERAL_SUMMARY,
    WEBSOCKET_TOKEN,
    PUBLIC_TIME,
    PUBLIC_TICKER,
)
#: The `endpoint` label of a path outside :data:`ENDPOINTS`, so a caller cannot mint series.
OTHER_ENDPOINT = "other"
#: The `code` label of an attempt that got no HTTP answer (refused, reset, timed out).
NO_ANSWER = "error"


_MESSAGE_LIMIT = 300  # characters of WhiteBIT's message kept in an error (and on /-/ready)


def endpoint_label(path: str) -> str:
    """The bounded ``endpoint`` label of a request path."""
    return path if path in ENDPOINTS else OTHER_ENDPOINT


# --- errors -----------------------------------------------------------------------------------


class RestError(Exception):
    """A private REST call failed; ``str()`` is a one-line operator-readable reason without secrets."""

    kind: ClassVar[str] = "unexpected"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        endpoint: str,
        message: str,
        *,
        status: int | None = None,
        code: Any = None,
        errors: Mapping[str, Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.message = message
        self.status = status
        self.code = code
        self.errors = dict(errors or {})
        #: The nonce of the refused request, when it was a signed one (set by the client).
        self.nonce: int | None = None
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = [] if self.status is None else [f"HTTP {self.status}"]
        if self.code is not None:
            where.append(f"code {self.code}")
        detail = f" ({', '.join(where)})" if where else ""
        text = f"{self.endpoint}: {self.kind} error{detail}: {self.message}"
        if self.errors:
            fields = "; ".join(f"{name}: {_field_text(value)}" for name, value in self.errors.items())
            text += f" [{fields}]"
        return text[: _MESSAGE_LIMIT * 2]


class AuthError(RestError):
    """The key, signature or payload was refused (wrong secret, disabled key, IP not allowed)."""

    kind = "auth"


class PermissionDeniedError(RestError):
    """The key is valid but may not call this endpoint (its access list in the API settings)."""

    kind = "permission"


class ValidationError(RestError):
    """WhiteBIT refused the parameters (HTTP 400/422 with field errors)."""

    kind = "validation"


class NonceError(RestError):
    """The nonce was refused as too old, too new or missing: usually clock skew beyond 5 s."""

    kind = "nonce"


class RateLimitedError(RestError):
    """HTTP 429 ``Too many requests.``: a rate limit, or a nonce WhiteBIT had already seen."""

    kind = "rate limit"
    retryable = True


class UnavailableError(RestError):
    """5xx (maintenance, outage) or no answer at all (refused, reset, timed out)."""

    kind = "unavailable"
    retryable = True


class NoAnswerError(UnavailableError):
    """No HTTP answer came: ``message`` names why (``connection refused (127.0.0.1:9)``)."""

    kind = "no answer"

    def _describe(self) -> str:
        return f"{self.endpoint}: {self.message}"


class ResponseError(RestError):
    """A success status whose body is not the JSON the endpoint documents."""

    kind = "response"


def _field_text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return str(value)


def _envelope(document: Any) -> tuple[str, Any, dict[str, Any]]:
    """``(message, code, errors)`` from any of WhiteBIT's error shapes (private, public, legacy 503)."""
    if not isinstance(document, dict):
        return "", None, {}
    message = document.get("message", document.get("msg", ""))
    errors = document.get("errors")
    if not isinstance(message, str):
        message = ""
    if not isinstance(errors, dict):
        errors = {}
    code = document.get("code")
    if isinstance(code, (dict, list)):
        code = None
    return message[:_MESSAGE_LIMIT], code, errors


_AUTH_MESSAGES = (
    "unauthorized request",
    "this action is unauthorized",
    "invalid payload",
    "payload not provided",
    "request not provided",
    "invalid request",
)
_PERMISSION_MESSAGES = ("permission", "not authorized to perform")


def classify(endpoint: str, status: int, document: Any, reason: str = "") -> RestError:
    """The :class:`RestError` for a non-2xx answer with (parsed) body ``document``."""
    message, code, errors = _envelope(document)
    lowered = message.lower().rstrip(".")
    text = message or reason or "no message"
    if status == 429:
        return RateLimitedError(endpoint, text, status=status, code=code, errors=errors)
    if status >= 500:
        return UnavailableError(
            endpoint,
            message or reason or "service unavailable",
            status=status,
            code=code,
        )
    if "nonce" in lowered:
        return NonceError(endpoint, text, status=status, code=code, errors=errors)
    if status == 403 or any(part in lowered for part in _PERMISSION_MESSAGES):
        return PermissionDeniedError(endpoint, text, status=status, code=code, errors=errors)
    if status == 401 or any(lowered.startswith(part) for part in _AUTH_MESSAGES):
        return AuthError(endpoint, text, status=status, code=code, errors=errors)
    if status in (400, 422):
        return ValidationError(endpoint, text, status=status, code=code, errors=errors)
    return RestError(endpoint, text, status=status, code=code, errors=errors)


# --- metrics ----------------------------------------------------------------------------------


class RestMetrics(Collector):
    """The REST client's own metrics for every account, rendered from counts kept here.

    ::

        whitebit_rest_requests_total{account="main",code="200",endpoint="/api/v4/main-account/balance"} 42.0
        whitebit_rest_rate_limited_total{account="main",endpoint="/api/v4/main-account/history"} 0.0
        whitebit_rest_rate_limit_usage_ratio{account="main",endpoint="/api/v4/main-account/history"} 0.015
    """

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        buckets: Sequence[float] = DEFAULT_DURATION_BUCKETS,
        accounts: Iterable[str] = (),
    ) -> None:
        # rest.request_duration_buckets: the config loader has checked they are positive and distinct.
        bounds = sorted(float(b) for b in buckets)
        self._limiter = limiter
        self.buckets: tuple[float, ...] = tuple(bounds)
        self._accounts: list[str] = []
        self._requests: dict[tuple[str, str, str], int] = {}
        self._rate_limited: dict[tuple[str, str], int] = {}
        # Per (account, endpoint): count per bucket (non-cumulative, last is +Inf) and the sum.
        self._durations: dict[tuple[str, str], list[int]] = {}
        self._duration_sums: dict[tuple[str, str], float] = {}
        for account in accounts:
            self.add_account(account)

    def add_account(self, account: str) -> None:
        """Start every series of ``account`` at zero (the endpoints it may call, code 200)."""
        if account in self._accounts:
            return
        self._accounts.append(account)
        for endpoint in ENDPOINTS:
            self._requests.setdefault((account, endpoint, "200"), 0)
            self._rate_limited.setdefault((account, endpoint), 0)
            self._durations.setdefault((account, endpoint), [0] * (len(self.buckets) + 1))
            self._duration_sums.setdefault((account, endpoint), 0.0)

    def observe(self, account: str, endpoint: str, code: str, seconds: float) -> None:
        """One attempt answered with ``code`` (HTTP status or ``error``) after ``seconds``."""
        key = (account, endpoint, code)
        self._requests[key] = self._requests.get(key, 0) + 1
        pair = (account, endpoint)
        counts = self._durations.setdefault(pair, [0] * (len(self.buckets) + 1))
        index = next(
            (i for i, bound in enumerate(self.buckets) if seconds <= bound),
            len(self.buckets),
        )
        counts[index] += 1
        self._duration_sums[pair] = self._duration_sums.get(pair, 0.0) + seconds
        if code == "429":
            self._rate_limited[pair] = self._rate_limited.get(pair, 0) + 1

    def collect(self) -> Iterator[Metric]:
        duration = WHITEBIT_REST_REQUEST_DURATION_SECONDS.family()
        for (account, endpoint), counts in sorted(self._durations.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(
                    (
                        "+Inf" if bound == float("inf") else repr(bound),
                        float(cumulative),
                    )
                )
            duration.add_metric([account, endpoint], buckets, self._duration_sums[(account, endpoint)])
        yield duration
        requests = WHITEBIT_REST_REQUESTS.family()
        for (account, endpoint, code), value in sorted(self._requests.items()):
            requests.add_metric([account, endpoint, code], float(value))
        yield requests
        limited = WHITEBIT_REST_RATE_LIMITED.family()
        for (account, endpoint), value in sorted(self._rate_limited.items()):
            limited.add_metric([account, endpoint], float(value))
        yield limited
        usage = WHITEBIT_REST_RATE_LIMIT_USAGE_RATIO.family()
        by_key: dict[Any, int] = {}
        for family in self._limiter.families():
            for key, count in family.usage_by_key().items():
                by_key[key] = by_key.get(key, 0) + count
        pairs = set(self._durations) | {k for k in by_key if isinstance(k, tuple)}
        for account, endpoint in sorted(pairs):
            # "other" is no /api/v4 path, so it gets the default family's limit.
            limit = self._limiter.limit_for(endpoint).limit
            usage.add_metric([account, endpoint], by_key.get((account, endpoint), 0) / limit)
        yield usage


# --- transport --------------------------------------------------------------------------------


class RestTransport:
    """What every account's client shares: one HTTP session, the rate limiter and the metrics.

    The session is opened on first use (inside the running loop) and closed by :meth:`close`, which
    the exporter calls once every source that uses it has stopped.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        metrics: RestMetrics,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = "whitebit-exporter",
    ) -> None:
        self.limiter = limiter
        self.metrics = metrics
        self.timeout = timeout
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared HTTP session (opened on first use; an error once closed)."""
        if self._closed:
            raise RuntimeError("the REST transport is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self._user_agent},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session; the transport cannot be used afterwards."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- client -----------------------------------------------------------------------------------


class RestClient:
    """Signed, rate-limited, retried private REST calls for one account (API key)."""

    def __init__(
        self,
        *,
        account: str,
        base_url: str,
        api_key: str,
        api_secret: str,
        transport: RestTransport,
        nonce_window: bool = True,
        nonces: NonceSource | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: Backoff = DEFAULT_BACKOFF,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_nonce_refused: Callable[[int], Awaitable[bool]] | None = None,
    ) -> None:
        self.account = account
        self.base_url = base_url.rstrip("/")
        # Where a request goes, for the errors that do not name it (a timeout).
        parts = urlsplit(self.base_url)
        default_port = 443 if parts.scheme == "https" else 80
        self._peer = f"{parts.hostname}:{parts.port or default_port}" if parts.hostname else None
        self._api_key = api_key
        self._api_secret = api_secret
        self.transport = transport
        self.nonce_window = nonce_window
        # Share one NonceSource between clients of the same key: WhiteBIT tracks nonces per key.
        self._nonces = nonces if nonces is not None else NonceSource(window=nonce_window)
        self._sequential = None if nonce_window else asyncio.Lock()
        self.max_retries = max_retries
        self.backoff = backoff
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._clock = clock
        # Awaited with the refused nonce when WhiteBIT refuses one; True when the request may go once
        # more at once, signed on a newer reading of the exchange's clock (see clock.py).
        self._on_nonce_refused = on_nonce_refused
        # Told of each failed attempt that is about to be retried (see observed()).
        self._on_retry: Callable[[RestError], None] | None = None
        transport.metrics.add_account(account)

    def __repr__(self) -> str:
        return f"RestClient(account={self.account!r}, base_url={self.base_url!r}, api_key={redact(self._api_key)!r})"

    def observed(self, on_retry: Callable[[RestError], None]) -> RestClient:
        """This client for one source: the same key, nonces, lock, transport and clock, and ``on_retry``
        called with each failed attempt it is about to retry (the last failure is raised instead)."""
        view = copy.copy(self)
        view._on_retry = on_retry
        return view

    async def post(self, path: str, params: Mapping[str, Any] | None = None, *, retries: int | None = None) -> Any:
        """Call the private endpoint ``path`` with ``params``; the decoded JSON answer.

        Raises a :class:`RestError` subclass; 429, 5xx and network failures only after ``retries``
        retries (``max_retries`` unless given).
        """
        return await self._with_retries(
            path,
            lambda endpoint: self._attempt(path, endpoint, params or {}),
            self.max_retries if retries is None else retries,
        )

    async def get_public(self, path: str) -> Any:
        """Call the public endpoint ``path`` (unsigned ``GET``); the decoded JSON answer, retried as :meth:`post`."""
        return await self._with_retries(path, lambda endpoint: self._attempt_public(path, endpoint), self.max_retries)

    async def _with_retries(self, path: str, attempt: Callable[[str], Awaitable[Any]], max_retries: int) -> Any:
        endpoint = endpoint_label(path)
        retry = 0
        resynced = False
        while True:
            try:
                return await attempt(endpoint)
            except RestError as error:
                if (
                    not resynced
                    and self._on_nonce_refused is not None
                    and error.nonce is not None
                    and self._nonce_refused(error)
                    and await self._on_nonce_refused(error.nonce)
                ):
                    resynced = True
                    continue
                if not error.retryable or retry >= max_retries:
                    raise
                delay = self.backoff.delay(retry, self._rng)
                retry += 1
                if isinstance(error, RateLimitedError):
                    self.transport.limiter.family(path).pause(delay)
                if self._on_retry is not None:
                    self._on_retry(error)
                # Detail: the source's outage log says what an operator needs (exporter/core/outage.py).
                log.debug(
                    "REST call failed; retrying",
                    extra={
                        "account": self.account,
                        "endpoint": endpoint,
                        "reason": str(error),
                        "retry": retry,
                        "retry_in_seconds": round(delay, 3),
                    },
                )
                await self._sleep(delay)

    def _nonce_refused(self, error: RestError) -> bool:
        # Under nonceWindow WhiteBIT answers a nonce outside its window, or reused, with a nonce
        # error or with the same 429 as a rate limit (docs/protocol.md#nonces): either may mean
        # our clock drifted from WhiteBIT's.
        return isinstance(error, NonceError) or (self.nonce_window and isinstance(error, RateLimitedError))

    async def websocket_token(self) -> str:
        """A fresh private WebSocket token (``POST /api/v4/profile/websocket_token``), in one attempt: the
        WebSocket's own reconnect backoff paces its token requests, and retrying here too would keep it
        "starting" through every retry and spend WhiteBIT's 10 token requests a minute."""
        document = await self.post(WEBSOCKET_TOKEN, retries=0)
        token = document.get("websocket_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise ResponseError(WEBSOCKET_TOKEN, "the answer has no websocket_token string")
        return token

    async def _attempt(self, path: str, endpoint: str, params: Mapping[str, Any]) -> Any:
        family = self.transport.limiter.family(path)
        slot = await family.acquire((self.account, endpoint))
        try:
            async with self._sequential if self._sequential is not None else contextlib.nullcontext():
                # Signed only now, after the wait for a slot, so the wait never ages the nonce.
                nonce = self._nonces.next()
                signed = sign_request(
                    path,
                    params,
                    api_key=self._api_key,
                    api_secret=self._api_secret,
                    nonce=nonce,
                    nonce_window=self.nonce_window,
                )
                status, raw, reason = await self._exchange("POST", path, endpoint, signed.body, signed.headers)
        finally:
            family.release(slot)
        try:
            return self._answer(endpoint, status, raw, reason)
        except RestError as error:
            error.nonce = nonce
            raise

    async def _attempt_public(self, path: str, endpoint: str) -> Any:
        family = self.transport.limiter.family(path)
        slot = await family.acquire((self.account, endpoint))
        try:
            status, raw, reason = await self._exchange("GET", path, endpoint, None, {})
        finally:
            family.release(slot)
        return self._answer(endpoint, status, raw, reason)

    def _answer(self, endpoint: str, status: int, raw: bytes, reason: str) -> Any:
        """The decoded JSON of a 2xx answer, or the :class:`RestError` the answer means."""
        document = _decode(raw)
        if 200 <= status < 300:
            if document is _UNDECODABLE:
                raise ResponseError(endpoint, "the answer is not JSON", status=status)
            return document
        if 300 <= status < 400:
            raise RestError(
                endpoint,
                f"unexpected redirect ({reason or 'no reason'}); check rest_url",
                status=status,
            )
        raise classify(endpoint, status, None if document is _UNDECODABLE else document, reason)

    async def _exchange(
        self, method: str, path: str, endpoint: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, bytes, str]:
        """Send, read; ``(status, body, reason)``. Records the attempt."""
        started = self._clock()
        try:
            async with self.transport.session.request(
                method,
                self.base_url + path,
                data=body,
                headers=dict(headers),
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status, reason = response.status, response.reason or ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.transport.metrics.observe(self.account, endpoint, NO_ANSWER, self._clock() - started)
            what = error_text(exc, timeout=self.transport.timeout, peer=self._peer)
            raise NoAnswerError(endpoint, what[:_MESSAGE_LIMIT]) from exc
        self.transport.metrics.observe(self.account, endpoint, str(status), self._clock() - started)
        return status, raw, reason


_UNDECODABLE: Any = object()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return _UNDECODABLE
