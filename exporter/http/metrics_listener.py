"""The metrics listener: ``/metrics``, a landing page at ``/``, ``/-/healthy`` and ``/-/ready``.

Meant for Prometheus and operators on a private address; the internet-facing webhook
listener lives in :mod:`exporter.http.webhook_listener` and shares nothing with it but the process.

With ``--web.config.file`` the listener may serve over TLS (:mod:`exporter.http.tls`), add the configured
response headers to every answer, and require basic auth or a client certificate with an allowed SAN
(:mod:`exporter.http.auth`; ``/-/healthy`` stays open to liveness probes).

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

from exporter.config.schema import WebSecurityConfig
from exporter.core.health import HealthRegistry
from exporter.core.metrics import METRICS_LISTENER_AUTH_REJECTED, SeriesValues
from exporter.http.auth import AccessControl
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


#: The :class:`AccessControl` of a metrics application with basic auth or allowed SANs, kept on it.
ACCESS_CONTROL = web.AppKey("access_control", AccessControl)


def create_metrics_app(
    registry: CollectorRegistry,
    health: HealthRegistry,
    version: str,
    *,
    security: WebSecurityConfig | None = None,
    collector: SeriesValues | None = None,
) -> web.Application:
    """The metrics listener's aiohttp application, rendering ``registry`` on each scrape.

    ``security`` (from ``--web.config.file``) adds its response headers to every answer and, with basic
    auth users or allowed client SANs, refuses other clients; the refusals counter is rendered by
    ``collector`` (the caller registers it), created only when something can be refused.
    """
    security = security if security is not None else WebSecurityConfig()
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

    sans = security.tls.client_allowed_sans if security.tls is not None else ()
    middlewares = []
    control: AccessControl | None = None
    if security.basic_auth_users or sans:
        reasons = (["missing_credentials", "wrong_credentials"] if security.basic_auth_users else []) + (
            ["client_certificate"] if sans else []
        )
        rejected = (collector if collector is not None else SeriesValues()).series(
            METRICS_LISTENER_AUTH_REJECTED, ((reason,) for reason in reasons)
        )
        control = AccessControl(security.basic_auth_users, sans, rejected, open_handlers=(healthy,))
        middlewares.append(control.middleware)
    app = web.Application(handler_args={"logger": ProtocolLog(MetricsParserRefusals())}, middlewares=middlewares)
    if control is not None:
        app[ACCESS_CONTROL] = control
    if security.headers:
        headers = security.headers

        async def add_headers(_: web.Request, response: web.StreamResponse) -> None:
            for name, value in headers:
                response.headers[name] = value

        app.on_response_prepare.append(add_headers)
    # add_get also answers HEAD; any other method gets 405 with an Allow header.
    app.router.add_get("/", index)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    return app
