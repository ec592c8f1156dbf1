"""The metrics listener: ``/metrics``, a landing page at ``/``, ``/-/healthy`` and ``/-/ready``.

Meant for Prometheus and operators on a private address; the internet-facing webhook
listener lives in :mod:`exporter.http.webhook_listener` and shares nothing with it but the process.
"""

from __future__ import annotations

import html

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.registry import CollectorRegistry

from exporter.core.health import HealthRegistry

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

    app = web.Application()
    # add_get also answers HEAD; any other method gets 405 with an Allow header.
    app.router.add_get("/", index)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    return app
