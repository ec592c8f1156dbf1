"""The metrics listener: ``/metrics``, a landing page at ``/``, ``/-/healthy`` and ``/-/ready``.

Meant for Prometheus and operators on a private address; the internet-facing webhook
listener lives in :mod:`exporter.http.webhook_listener` and shares nothing with it but the process.

A request aiohttp's HTTP parser refuses (aiohttp answers 400 itself) is logged at most once per 10 s
per kind, with the client's address and the parser's exception class, never a traceback or the
request's bytes: the application's ``handler_args`` hand aiohttp a
:class:`~exporter.http.webhook_listener.ProtocolLog`, as on the webhook listener.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.registry import CollectorRegistry

from exporter.core.health import HealthRegistry
from exporter.http.webhook_listener import ProtocolLog
from exporter.webhooks.intake import RejectionLog

log = logging.getLogger(__name__)

_LANDING_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>WhiteBIT Exporter</title></head>
<body>
<h1>WhiteBIT Exporter</h1>
<p>Version {version}</p>
<ul>
<li><a href="metrics">Metrics</a></li>
<li><a href="-/healthy">Health</a></li>
<li><a href="-/ready">Readiness</a></li>
</ul>
</body>
</html>
"""


class MetricsParserRefusals:
    """Logs (rate-limited, per exception class) the requests the metrics listener's parser refused."""

    def __init__(self) -> None:
        self._log = RejectionLog(log, message="request refused by the metrics listener")

    def parser_refused(self, exc: HttpProcessingError, remote: str | None) -> None:
        detail = type(exc).__name__

        def describe() -> dict[str, Any]:
            return {"listener": "metrics", "reason": "bad_request", "status": 400, "remote": remote, "detail": detail}

        self._log.rejected(("listener", "metrics", detail), describe)


def create_metrics_app(registry: CollectorRegistry, health: HealthRegistry, version: str) -> web.Application:
    """The metrics listener's aiohttp application, rendering ``registry`` on each scrape."""
    # Relative links on the landing page keep working behind a reverse proxy's path prefix.
    landing = _LANDING_PAGE.format(version=html.escape(version))

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=landing, content_type="text/html")

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def ready(_: web.Request) -> web.Response:
        is_ready, lines = health.readiness()
        # Sources that serve without a part another source covers: listed, but not failing.
        notes = "".join(f"degraded: {line}\n" for line in health.notes())
        if is_ready:
            return web.Response(text="ready\n" + notes)
        return web.Response(status=503, text="".join(f"{line}\n" for line in lines) + notes)

    app = web.Application(handler_args={"logger": ProtocolLog(MetricsParserRefusals())})
    # add_get also answers HEAD; any other method gets 405 with an Allow header.
    app.router.add_get("/", index)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    return app
