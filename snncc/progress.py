"""Progress on stderr: a bar in a terminal, periodic one-line reports in pipes and logs.

Invariant: when stderr is not a terminal (CI, nohup, cluster jobs), a loop of N steps prints a line
`LABEL: <unit> k of N (p%), <elapsed> elapsed, ETA <eta>` whenever another 10% of the steps is done
(at most one such line per 2 s) or 30 s have passed since the last line, and always after the last
step; nothing else.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import click

REPORT_FRACTION = 0.10
REPORT_SECONDS = 30.0
MIN_GAP_SECONDS = 2.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class ProgressLog:
    """Counts steps of a loop of known length and says when a line is due (see the invariant)."""

    def __init__(self, total: int, label: str, unit: str = "step", clock=time.monotonic):
        self.total, self.label, self.unit, self.clock = total, label, unit, clock
        self.started = self.last_time = clock()
        self.done = self.last_done = 0

    def step(self) -> str | None:
        """Count one finished step; the line to print when one is due, else None."""
        self.done += 1
        now = self.clock()
        since = now - self.last_time
        due = (self.done == self.total or since >= REPORT_SECONDS
               or (self.done - self.last_done >= max(1, REPORT_FRACTION * self.total) and since >= MIN_GAP_SECONDS))
        if not due:
            return None
        self.last_done, self.last_time = self.done, now
        return self.line(now)

    def step_line(self) -> str:
        """Count one finished step and return its line, due or not (for loops of few, long steps)."""
        self.step()
        return self.line(self.clock())

    def line(self, now: float) -> str:
        elapsed = now - self.started
        percent = 100 * self.done / self.total if self.total else 100.0
        text = f"{self.label}: {self.unit} {self.done} of {self.total} ({percent:.0f}%), {_duration(elapsed)} elapsed"
        if self.done < self.total:
            text += f", ETA {_duration(elapsed / self.done * (self.total - self.done))}"
        return text


def progress(items: Iterable, label: str, unit: str = "batch") -> Iterator:
    """Iterate over `items` (a sized iterable) with progress on stderr."""
    items = list(items)
    with progress_counter(len(items), label, unit) as advance:
        for item in items:
            yield item
            advance()


@contextlib.contextmanager
def progress_counter(total: int, label: str, unit: str = "batch") -> Iterator[Callable[..., None]]:
    """`advance(n=1)`: n more of `total` steps are done (e.g. a whole shard of batches at once), shown as
    `progress` shows them."""
    if sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            yield lambda n=1: bar.update(n)
        return
    log = ProgressLog(total, label, unit)

    def advance(n: int = 1) -> None:
        lines = [log.step() for _ in range(n)]
        line = next((line for line in reversed(lines) if line), None)
        if line:
            click.echo(line, err=True)

    yield advance
