"""Fixtures shared by every test module (helpers are in :mod:`tests.helpers`).

``make_config`` builds a :class:`~exporter.config.schema.Config` with port-0 listeners on loopback
and a state file under ``tmp_path``.

Every test under ``tests/bundle/`` and ``tests/e2e/`` (the monitoring bundle with promtool and a real
Prometheus, and the whole exporter against the simulator) is marked ``slow``:
``pytest -m "not slow"`` skips them during development; CI runs everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from exporter.config.schema import (
    Config,
    ListenAddress,
    StateConfig,
    WebConfig,
    WebhooksConfig,
    WhitebitAccountConfig,
    ZerohashConfig,
)

#: Fixtures that start Exporters (start_exporter, http) live in their own module.
pytest_plugins = ["tests.exporters"]

LOOPBACK_ANY_PORT = ListenAddress("127.0.0.1", 0)
TESTS = Path(__file__).resolve().parent
SLOW_FOLDERS = frozenset({"bundle", "e2e"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of the slow folders, so one flag skips them all."""
    for item in items:
        if item.path.resolve().relative_to(TESTS).parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def make_config(tmp_path: Any) -> Callable[..., Config]:
    """A factory for Configs whose listeners bind 127.0.0.1:0 and whose state is under tmp_path."""

    def build(
        whitebit: Iterable[WhitebitAccountConfig] = (),
        *,
        zerohash: ZerohashConfig | None = None,
        max_body_bytes: int = 65536,
        web: ListenAddress = LOOPBACK_ANY_PORT,
        webhooks: ListenAddress = LOOPBACK_ANY_PORT,
    ) -> Config:
        return Config(
            web=WebConfig(listen_address=web),
            webhooks=WebhooksConfig(listen_address=webhooks, max_body_bytes=max_body_bytes),
            state=StateConfig(path=str(tmp_path / "state.db")),
            whitebit=tuple(whitebit),
            zerohash=zerohash,
        )

    return build
