"""The real command line refusing a state file it must not use: one line on stderr, exit status 1, no traceback."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from exporter.core.state import StateError, StateStore
from tests.core.test_state_health import damage_page, filled_store
from tests.helpers import parse_logfmt
from tests.test_cli import GOOD_CONFIG, read_until, spawn

EXIT_TIMEOUT = 30.0  # a slow shared machine may take seconds to import everything


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(GOOD_CONFIG.replace("{state}", str(tmp_path / "state.db")))
    return path


async def refused(config: Path, cwd: Path) -> tuple[int, str, list[str]]:
    """Run the exporter expecting it to refuse to start: its status, the ``error`` of its one error line (whose
    msg says it cannot start) and all stderr lines."""
    proc = await spawn("--config.file", str(config), cwd=cwd)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=EXIT_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = stderr.decode().splitlines()
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    errors = [line for line in lines if parse_logfmt(line).get("level") == "error"]
    assert len(errors) == 1, "\n".join(lines)
    assert proc.returncode is not None
    fields = parse_logfmt(errors[0])
    assert fields["msg"] == "exiting: cannot start"
    return proc.returncode, fields["error"], lines


async def test_a_second_exporter_on_the_same_state_file_exits_1_naming_the_first(config: Path, tmp_path: Path) -> None:
    first = await spawn("--config.file", str(config), cwd=tmp_path)
    try:
        await read_until(first, "listening")
        status, message, _ = await refused(config, tmp_path)
        assert status == 1
        assert f"is in use by another whitebit-exporter (pid {first.pid})" in message
        # The first one is untouched by the attempt and stops cleanly, releasing the lock.
        first.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.wait(), timeout=EXIT_TIMEOUT) == 0
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    second = await spawn("--config.file", str(config), cwd=tmp_path)
    try:
        await read_until(second, "listening")
    finally:
        second.kill()  # SIGKILL: the kernel releases the lock of a process however it ends
        await second.wait()
    third = await spawn("--config.file", str(config), cwd=tmp_path)
    try:
        await read_until(third, "listening")
    finally:
        third.send_signal(signal.SIGTERM)
        await asyncio.wait_for(third.wait(), timeout=EXIT_TIMEOUT)


async def test_a_damaged_state_file_stops_the_start_with_one_line(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    root = filled_store(path)
    damage_page(path, root + 3)
    status, message, _ = await refused(config, tmp_path)
    assert status == 1
    assert message.startswith(f"{path} is damaged (quick_check: ")
    # The refusal changed nothing: the file is still refused, as damaged.
    with pytest.raises(StateError, match="is damaged"):
        StateStore.open(path)
