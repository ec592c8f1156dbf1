"""``whitebit-exporter state rebuild``: derive the state file's transfers and balances again.

Offline: it takes the state file's lock, so it refuses to run while the exporter (or another
rebuild) has the file, and the exporter refuses to start while it runs. It replays the evidence
the file keeps through this version's rules (:mod:`exporter.rebuild`) in one transaction and prints
what changed; ``--dry-run`` prints the same and writes nothing. On a terminal a progress bar shows
on standard error while the evidence is replayed.

Exit status: 0 rebuilt (or dry run done), 1 an error (nothing written), 2 bad flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from exporter.config.load import ConfigError, load_config
from exporter.core.state import StateError, StateStore
from exporter.rebuild import Rebuilder, report_lines, settings_from_config

PROG = "whitebit-exporter state"
#: Seconds between two redraws of the progress bar.
REDRAW_INTERVAL = 0.1
BAR_WIDTH = 30


def build_parser() -> argparse.ArgumentParser:
    """The ``state`` command's flags."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Work on a stopped exporter's state file.", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{rebuild}")
    rebuild = commands.add_parser(
        "rebuild",
        help="derive every transfer and Zero Hash balance again from the deliveries and history kept",
        description=(
            "Derive every transfer and Zero Hash balance again from the webhook deliveries and history"
            " records the state file keeps, by this version's rules, and print what changed. Stop the"
            " exporter first: the rebuild takes the state file's lock."
        ),
        allow_abbrev=False,
    )
    rebuild.add_argument(
        "--config.file", dest="config_file", metavar="PATH", required=True, help="the exporter's config"
    )
    rebuild.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    rebuild.add_argument("--format", choices=("table", "json"), default="table", help="(default: %(default)s)")
    return parser


def main(argv: Sequence[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``state ...``; the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # --help (0) or a bad flag (2, message already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = load_config(args.config_file)
        path = config.state.path
        bar = ProgressBar(err) if err.isatty() else None
        with StateStore.open(path, exclusive=True) as store:
            report = Rebuilder(store, settings_from_config(config), progress=bar).run(dry_run=args.dry_run)
        if bar is not None:
            bar.finish()
    except (StateError, ConfigError, OSError) as exc:
        print(f"{PROG} {args.command}: {exc}", file=err)
        return 1
    if args.format == "json":
        print(json.dumps({"state_path": str(path), **report.as_dict()}, sort_keys=True), file=out)
    else:
        for line in report_lines(report, str(path)):
            print(line, file=out)
    return 0


class ProgressBar:
    """A one-line progress bar redrawn in place (``\\r``) on a terminal, at most every 0.1 s."""

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._drawn_at = -float("inf")
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if done < total and now - self._drawn_at < REDRAW_INTERVAL:
            return
        self._drawn_at = now
        self._drawn = True
        self._stream.write("\r" + render_bar(done, total))
        self._stream.flush()

    def finish(self) -> None:
        """End the bar's line, so that what follows starts on a line of its own."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def render_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``replaying [#######.......]  45%  4,500/10,000`` (an empty file counts as done)."""
    share = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    filled = round(share * width)
    return f"replaying [{'#' * filled}{'.' * (width - filled)}] {share:4.0%}  {done:,}/{max(total, done):,}"
