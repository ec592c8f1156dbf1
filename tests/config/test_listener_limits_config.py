"""The listeners' connection-limit keys (``request_timeout``, ``idle_timeout``, ``max_connections``) load.

Invalid values are pinned in tests/config/test_load_invalid.py (``invalid-listener-limits.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from exporter.config.load import load_config
from exporter.config.schema import WebConfig, WebhooksConfig

ACCOUNT = "whitebit:\n  - name: main\n    api_key: key\n    api_secret: secret\n"


def test_listener_limits_default_to_the_documented_values(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(ACCOUNT)

    config = load_config(path, {})

    assert (config.web.request_timeout, config.web.idle_timeout, config.web.max_connections) == (10.0, 5.0, 64)
    assert (config.webhooks.request_timeout, config.webhooks.idle_timeout, config.webhooks.max_connections) == (
        10.0,
        5.0,
        512,
    )


def test_listener_limits_are_read_from_web_and_webhooks(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "web: {request_timeout: 3s, idle_timeout: 500ms, max_connections: 16}\n"
        "webhooks: {request_timeout: '${TIMEOUT}', idle_timeout: 2, max_connections: 1000}\n" + ACCOUNT
    )

    config = load_config(path, {"TIMEOUT": "20s"})

    assert config.web == WebConfig(
        listen_address=config.web.listen_address, request_timeout=3.0, idle_timeout=0.5, max_connections=16
    )
    assert config.webhooks == WebhooksConfig(
        listen_address=config.webhooks.listen_address, request_timeout=20.0, idle_timeout=2.0, max_connections=1000
    )
