"""The internet-facing webhook listener: receivers and ``/whiteBIT-verification``, nothing else.

Receivers (one per provider) are plain objects with a ``path`` and an async ``handle``;
:func:`add_receivers` is the one place that turns them into routes, so adding a provider never
touches the listener itself. Request bodies are capped at ``webhooks.max_body_bytes``
(``client_max_size``): ``await request.read()`` on a larger body raises
``HTTPRequestEntityTooLarge`` (413), which a receiver may catch to count the rejection.

**Header limits.** A WhiteBIT delivery carries its whole body a second time, base64-encoded, in the
``X-TXC-PAYLOAD`` header (docs/protocol.md#webhook-envelope-and-signature), so that one header is
4/3 of the body. aiohttp refuses a request line, a header name or a header value longer than 8190
bytes by default, with a 400 of its own, which would turn away every genuine delivery of more than
about 6 KiB although the body limit is 64 KiB. The listener therefore gives aiohttp limits sized from
``webhooks.max_body_bytes`` (:func:`header_limits`): the base64 length of the largest body plus room
for the header's name, never below aiohttp's defaults, so any delivery within the body limit is
accepted end to end (a reverse proxy in front must allow header lines that long too).

**Refusals before a receiver.** What the listener refuses before any receiver sees the request is
counted in ``whitebit_exporter_webhook_listener_rejected_total{reason}`` and logged at most once per
10 s per reason (the client's address and the parser's exception class, never the request's bytes):

- ``header_too_large`` (400): the request line, a header name or a header value longer than the
  limit, or more than :data:`MAX_HEADERS` header fields;
- ``bad_request`` (400): anything else aiohttp's HTTP parser refuses (a malformed request line or
  header, bad chunked or length framing, TLS spoken to this plain-HTTP port);
- ``not_found`` (404): a path that is neither a receiver nor the verification path (a body over the
  limit sent there is not read: the answer is still 404);
- ``method_not_allowed`` (405): a method the path does not serve.

aiohttp answers a request its parser refuses before any application code runs, so no middleware or
signal sees it (aiohttp issue #3287, open). Its request handler reports each such refusal to its
``logger`` with the parser's exception as ``exc_info`` (aiohttp 3.14 ``web_protocol.RequestHandler
.handle_error``); the listener hands aiohttp, through the application's ``handler_args``, a
:class:`ProtocolLog` that counts those and passes every other record on to ``aiohttp.server``
unchanged. The router's 404 and 405 are counted in the response-prepare hook, which every answer of
the application passes. The parser's own 400 still carries aiohttp's text and ``Server`` header.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestPayloadError

from exporter.config.schema import WebhooksConfig, WhitebitAccountConfig
from exporter.core.metrics import WEBHOOK_LISTENER_REJECTED, SeriesValues
from exporter.webhooks.intake import RejectionLog

log = logging.getLogger(__name__)

VERIFICATION_PATH = "/whiteBIT-verification"

#: aiohttp's default longest request line, header name and header value, in bytes.
AIOHTTP_FIELD_LIMIT = 8190
#: Room in the longest header field beyond the base64 of the largest body: the header's name and slack.
HEADER_NAME_ROOM = 1024
#: Header fields a request may have (aiohttp's default, stated so that it is one of the documented limits).
MAX_HEADERS = 128
#: Why the listener refused a request before a receiver (the ``reason`` label); see the module docstring.
REFUSAL_REASONS = ("header_too_large", "bad_request", "not_found", "method_not_allowed")
# aiohttp's parser says this when a request has more than max_headers fields (a BadHttpMessage, no subclass).
_TOO_MANY_HEADERS = "Too many headers"
_ROUTER_REASONS = {404: "not_found", 405: "method_not_allowed"}


class WebhookReceiver(Protocol):
    """One provider's webhook endpoint, answering ``POST <path>``."""

    @property
    def path(self) -> str:
        """The URL path, e.g. ``/webhooks/whitebit``."""
        ...

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Verify and process one delivery."""
        ...


def header_limits(max_body_bytes: int) -> dict[str, int]:
    """aiohttp's request-handler limits for a listener whose bodies may be ``max_body_bytes`` long.

    The longest legitimate header is ``X-TXC-PAYLOAD``, base64 (with padding) of the whole body.
    """
    base64_length = 4 * -(-max_body_bytes // 3)
    size = max(AIOHTTP_FIELD_LIMIT, base64_length + HEADER_NAME_ROOM)
    # The request line gets the same limit: aiohttp's pure-Python parser measures a header line that
    # has not ended yet against max_line_size.
    return {"max_line_size": size, "max_field_size": size, "max_headers": MAX_HEADERS}


class ListenerRefusals:
    """Counts and logs (rate-limited) what the listener refuses before a receiver sees it.

    Its counter is rendered by ``collector``.
    """

    def __init__(self, collector: SeriesValues) -> None:
        self.collector = collector
        self._rejected = collector.series(WEBHOOK_LISTENER_REJECTED, ((reason,) for reason in REFUSAL_REASONS))
        self._log = RejectionLog(log, message="request refused by the webhook listener")

    def parser_refused(self, exc: HttpProcessingError, remote: str | None) -> None:
        """aiohttp's HTTP parser refused a request (aiohttp answers 400 itself)."""
        too_large = isinstance(exc, LineTooLong) or exc.message.startswith(_TOO_MANY_HEADERS)
        # The exception's message quotes the request's bytes: only its class name is logged.
        self._refused("header_too_large" if too_large else "bad_request", 400, remote, type(exc).__name__)

    def router_refused(self, status: int, remote: str | None) -> None:
        """The router found no route (404) or not for this method (405)."""
        self._refused(_ROUTER_REASONS.get(status, "bad_request"), status, remote, "")

    def _refused(self, reason: str, status: int, remote: str | None, detail: str) -> None:
        self._rejected[(reason,)] += 1

        def describe() -> dict[str, Any]:
            fields: dict[str, Any] = {"listener": "webhooks", "reason": reason, "status": status, "remote": remote}
            if detail:
                fields["detail"] = detail
            return fields

        self._log.rejected(("listener", "", reason), describe)


class ParserRefusals(Protocol):
    """What a listener does with a request aiohttp's HTTP parser refused (aiohttp has answered 400)."""

    def parser_refused(self, exc: HttpProcessingError, remote: str | None) -> None:
        """Count and log (rate-limited) one refused request; ``remote`` is the client's address."""
        ...


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """The ``logger`` of a listener's aiohttp request handlers (see the module docstring).

    A record carrying an :class:`HttpProcessingError` is a request the HTTP parser refused: counted
    and logged by ``refusals`` instead of aiohttp's error line with a traceback (which quotes the
    request's bytes). A body that broke off or does not decode (a receiver counted it already) is a
    debug line. Anything else goes to ``aiohttp.server`` as before. The metrics listener uses
    one too (:mod:`exporter.http.metrics_listener`).
    """

    def __init__(self, refusals: ParserRefusals) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._refusals = refusals

    def log(
        self,
        level: int,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        if isinstance(exc_info, HttpProcessingError):
            # aiohttp logs "Error handling request from %s" with the client's address as the argument.
            remote = args[0] if args and isinstance(args[0], str) else None
            self._refusals.parser_refused(exc_info, remote)
            return
        if isinstance(exc_info, (RequestPayloadError, ConnectionError)):
            # A body that stopped or does not decode, met again when aiohttp drains it after the
            # answer: the receiver has counted it (``unreadable_body``); no traceback for the client's fault.
            super().log(logging.DEBUG, "request body unreadable after the answer: %s", type(exc_info).__name__)
            return
        super().log(
            level,
            msg,
            *args,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=stacklevel + 1,
            extra=extra,
            **kwargs,
        )


#: The listener's :class:`ListenerRefusals`, kept on its application.
LISTENER_REFUSALS = web.AppKey("listener_refusals", ListenerRefusals)


def verification_keys(accounts: Sequence[WhitebitAccountConfig]) -> list[str]:
    """Every configured WhiteBIT webhook public key, in config order, without repeats."""
    keys: list[str] = []
    for account in accounts:
        if account.webhook is not None and account.webhook.public_key not in keys:
            keys.append(account.webhook.public_key)
    return keys


async def _head_ok(_: web.Request) -> web.Response:
    # A HEAD on a receiver path answers 200 so a sender or a proxy can probe the URL without posting;
    # WhiteBIT's first webhook docs probed this way (docs/protocol.md#webhook-setup).
    return web.Response()


def add_receivers(app: web.Application, receivers: Sequence[WebhookReceiver]) -> None:
    """Route ``POST`` (the delivery) and ``HEAD`` (the sender's probe) of each receiver's path."""
    for receiver in receivers:
        app.router.add_post(receiver.path, receiver.handle)
        app.router.add_route("HEAD", receiver.path, _head_ok)


def create_webhook_app(
    config: WebhooksConfig,
    accounts: Sequence[WhitebitAccountConfig],
    receivers: Sequence[WebhookReceiver] = (),
    *,
    collector: SeriesValues | None = None,
) -> web.Application:
    """The webhook listener's aiohttp application; ``accounts`` give the domain-verification keys.

    The listener's own counter is rendered by ``collector`` (the caller registers it); without one
    the listener keeps a collector of its own, reachable as ``app[LISTENER_REFUSALS].collector``.
    """
    keys = verification_keys(accounts)
    refusals = ListenerRefusals(collector if collector is not None else SeriesValues())

    async def verification(_: web.Request) -> web.Response:
        # Public keys only: WhiteBIT's domain-ownership check expects exactly this array. The method
        # its checker uses is not documented (docs/protocol.md#webhook-setup): GET, HEAD and POST answer.
        return web.json_response(keys)

    async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
        # aiohttp otherwise announces "Python/3.x aiohttp/3.y" to the whole internet.
        response.headers["Server"] = "whitebit-exporter"
        # Only the router's own 404/405 are counted here (a receiver counts its rejections itself).
        if response.status in _ROUTER_REASONS and request.match_info.http_exception is not None:
            refusals.router_refused(response.status, request.remote)

    # handler_args go to every aiohttp request handler (one per connection) the runner makes.
    handler_args: dict[str, Any] = {**header_limits(config.max_body_bytes), "logger": ProtocolLog(refusals)}
    app = web.Application(client_max_size=config.max_body_bytes, handler_args=handler_args)
    app[LISTENER_REFUSALS] = refusals
    app.on_response_prepare.append(on_response_prepare)
    app.router.add_get(VERIFICATION_PATH, verification)  # GET and HEAD
    app.router.add_post(VERIFICATION_PATH, verification)
    add_receivers(app, receivers)
    return app
