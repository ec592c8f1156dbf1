"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.command_line import Started


@pytest.fixture
async def processes() -> AsyncIterator[Started]:
    """The command lines a test starts (:func:`~tests.e2e.command_line.start_command_line`), killed at its end."""
    started: Started = []
    yield started
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
