"""Progress on stderr: a rich progress bar on a terminal, plain lines anywhere else.

:class:`Progress` is a callable ``progress(done, total[, what])``, the form
:func:`~stability_lab.lab.run_sweep` and :func:`~stability_lab.portability.portability`
report progress in. Nothing is drawn until the first call (so an error raised before
the work starts is the only line on stderr), then:

- on a terminal, a :mod:`rich.progress` bar whose description, drawn on its own line
  above the bar, is the headline (the sweep's estimate line) and the current item;
  then spinner, bar, done/total, elapsed time and the time remaining, which before the
  first item finishes counts down from the estimate;
- elsewhere (a pipe, a log file, a captured stream), when ``plain`` is true, the
  headline once, then a line ``progress: 24/72 runs, 0:00:12 elapsed, ETA 0:00:24`` at
  each tenth of the work and at the end: no carriage returns, no ANSI escapes. With
  ``plain`` false, nothing. ``finishing`` says, once every item is done, what the
  work does next (a sweep's analysis, which can outlast its runs).
"""

from __future__ import annotations

import sys
import time
from typing import IO

from rich.progress import ProgressColumn


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0) + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Progress of ``total`` items (``unit``) on ``stream`` (stderr by default).

    ``headline``: a line shown with the bar on a terminal (its description) and printed
    once before plain progress lines. ``estimate_seconds``: the expected duration, the
    time remaining before any item has finished. ``tty``: force the terminal (True) or
    plain (False) form; by default ``stream.isatty()``.
    """

    def __init__(self, total: int | None = None, *, unit: str = "runs",
                 headline: str = "", estimate_seconds: float | None = None,
                 stream: IO[str] | None = None, tty: bool | None = None,
                 plain: bool = True, finishing: str | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.plain = plain
        self.total = total
        self.unit = unit
        self.headline = headline
        self.estimate_seconds = estimate_seconds
        self.finishing = finishing
        self._bar = None
        self._task = None
        self._start: float | None = None
        self._printed_tenth = -1
        self._closed = False

    # -- the terminal form -------------------------------------------------------------
    def _start_bar(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn
        from rich.progress import Progress as RichProgress
        from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

        class _HeadlineAbove(RichProgress):
            """The description (the estimate line, or the item at work) on its own line
            above the bar, so that a long one never squeezes the bar's columns."""

            def get_renderables(self):
                from rich.text import Text

                for task in self.tasks:
                    if task.description:
                        yield Text(task.description, overflow="fold")
                yield self.make_tasks_table(self.tasks)

        console = Console(file=self.stream, force_terminal=True)
        self._bar = _HeadlineAbove(
            SpinnerColumn(),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn(self.unit, markup=False),
            TimeElapsedColumn(),
            TextColumn("ETA", markup=False),
            _Remaining(self.estimate_seconds),
            console=console, transient=False, redirect_stdout=False, redirect_stderr=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.headline or "", total=total)

    # -- the callable ------------------------------------------------------------------
    def __call__(self, done: int, total: int, what: str | None = None) -> None:
        if self._closed:
            return
        if self._start is None:
            self._start = time.monotonic()
            if self.tty:
                self._start_bar(total)
            elif self.plain and self.headline:
                self.stream.write(self.headline + "\n")
                self.stream.flush()
        self.total = total
        if self.tty:
            changes = {"completed": done, "total": total}
            if what is not None:
                changes["description"] = what if not self.headline else f"{self.headline} {what}"
            if done == total and self.finishing:
                changes["description"] = "\n".join(filter(None, [self.headline, self.finishing]))
            self._bar.update(self._task, **changes)
            return
        if not self.plain:
            return
        tenth = (10 * done) // max(total, 1)
        if done == 0 or (tenth <= self._printed_tenth and done != total) or (
                self._printed_tenth == 10):
            self._printed_tenth = max(self._printed_tenth, tenth)
            return
        self._printed_tenth = tenth
        elapsed = time.monotonic() - self._start
        line = f"progress: {done}/{total} {self.unit}, {_clock(elapsed)} elapsed"
        eta = self._eta(done, total, elapsed)
        if done < total and eta is not None:
            line += f", ETA {_clock(eta)}"
        if what:
            line += f" ({what})"
        if done == total and self.finishing:
            line += f"; {self.finishing}"
        self.stream.write(line + "\n")
        self.stream.flush()

    def _eta(self, done: int, total: int, elapsed: float) -> float | None:
        if done > 0 and elapsed > 0:
            return elapsed * (total - done) / done
        if self.estimate_seconds is not None:
            return max(self.estimate_seconds - elapsed, 0.0)
        return None

    def close(self) -> None:
        """Stop the bar (it stays drawn, with a newline after it); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Remaining(ProgressColumn):
    """Time remaining: rich's estimate from the speed so far, or, before any item has
    finished, the sweep's estimate less the time elapsed (shown with a ``~``)."""

    max_refresh = 0.5

    def __init__(self, estimate_seconds: float | None = None) -> None:
        super().__init__()
        self.estimate_seconds = estimate_seconds

    def render(self, task):
        from rich.text import Text

        if task.finished:
            return Text(_clock(0), style="progress.remaining")
        remaining = task.time_remaining
        if remaining is None and self.estimate_seconds is not None and not task.completed:
            return Text("~" + _clock(max(self.estimate_seconds - (task.elapsed or 0), 0)),
                        style="progress.remaining")
        if remaining is None:
            return Text("-:--:--", style="progress.remaining")
        return Text(_clock(remaining), style="progress.remaining")
