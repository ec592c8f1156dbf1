"""The internet-facing webhook listener: receivers and ``/whiteBIT-verification``, nothing else.

Receivers (one per provider) are plain objects with a ``path`` and an async ``handle``;
:func:`add_receivers` is the one place that turns them into routes, so adding a provider never
touches the listener itself. Request bodies are capped at ``webhooks.max_body_bytes``
(``client_max_size``): ``await request.read()`` on a larger body raises
``HTTPRequestEntityTooLarge`` (413), which a receiver may catch to count the rejection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from exporter.config.schema import WebhooksConfig, WhitebitAccountConfig

VERIFICATION_PATH = "/whiteBIT-verification"


class WebhookReceiver(Protocol):
    """One provider's webhook endpoint, answering ``POST <path>``."""

    @property
    def path(self) -> str:
        """The URL path, e.g. ``/webhooks/whitebit``."""
        ...

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Verify and process one delivery."""
        ...


def verification_keys(accounts: Sequence[WhitebitAccountConfig]) -> list[str]:
    """Every configured WhiteBIT webhook public key, in config order, without repeats."""
    keys: list[str] = []
    for account in accounts:
        if account.webhook is not None and account.webhook.public_key not in keys:
            keys.append(account.webhook.public_key)
    return keys


async def _hide_server_version(_: web.Request, response: web.StreamResponse) -> None:
    # aiohttp otherwise announces "Python/3.x aiohttp/3.y" to the whole internet.
    response.headers["Server"] = "whitebit-exporter"


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
) -> web.Application:
    """The webhook listener's aiohttp application; ``accounts`` give the domain-verification keys."""
    keys = verification_keys(accounts)

    async def verification(_: web.Request) -> web.Response:
        # Public keys only: WhiteBIT's domain-ownership check expects exactly this array.
        return web.json_response(keys)

    app = web.Application(client_max_size=config.max_body_bytes)
    app.on_response_prepare.append(_hide_server_version)
    app.router.add_get(VERIFICATION_PATH, verification)  # GET and HEAD
    add_receivers(app, receivers)
    return app
