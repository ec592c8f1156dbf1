"""The exporter's command line as end-to-end tests run it: a subprocess logging to a file, ready once it says
"listening" (``tests/e2e/conftest.py`` has the ``processes`` fixture that kills what a test left running)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.helpers import parse_logfmt, wait_for

#: Every process a test started, killed at its end whatever happened (the ``processes`` fixture).
Started = list[asyncio.subprocess.Process]
STARTUP_TIMEOUT = 30.0


async def start_command_line(
    config: Path, log: Path, started: Started, *, env: Mapping[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    """``python -m exporter --config.file CONFIG``, its log in ``log`` (emptied first; a pipe left unread
    would block it); the process and the fields of its "listening" line (``metrics``, ``webhooks``)."""
    await asyncio.to_thread(log.write_bytes, b"")  # this start's "listening" line is the only one
    with log.open("ab") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            cwd=config.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=sink,
        )
    started.append(proc)
    found: dict[str, str] = {}

    def listening() -> bool:
        for line in log.read_text().splitlines():
            fields = parse_logfmt(line)
            if fields.get("msg") == "listening" and fields.get("webhooks"):
                found.update(fields)
        return bool(found) and proc.returncode is None

    await wait_for(listening, timeout=STARTUP_TIMEOUT, interval=0.05, message="the exporter is not listening")
    return proc, found
