"""Progress within an epoch for a log: a plain line every few seconds where no terminal shows a bar.

tqdm draws its bar only on a terminal; a run whose output goes to a file, a pipe or a
cluster scheduler's log would otherwise print nothing until the epoch ends.
:class:`ProgressLines` writes ``epoch E/N  step S/T  loss L  X img/s  M:SS left`` at most
once every ``train.log_interval_s`` seconds instead; the bar, on a terminal, stays as it is.
Whether lines are written is decided from the streams passed in
(:func:`wants_progress_lines`), never from a global switch, so tests can choose.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an open terminal (``False`` for files, pipes, closed or missing streams)."""
    isatty = getattr(stream, "isatty", None)
    if not callable(isatty):
        return False
    try:
        return bool(isatty())
    except ValueError:  # a closed stream
        return False


def wants_progress_lines(stdout: Any, stderr: Any) -> bool:
    """Whether a run writing its log to ``stdout`` (and tqdm's bar to ``stderr``) needs progress lines:
    when the log is not a terminal, or the bar is not drawn (tqdm draws it only on a terminal)."""
    return not (is_terminal(stdout) and is_terminal(stderr))


def duration(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour on."""
    minutes, secs = divmod(max(round(seconds), 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLines:
    """One epoch's progress lines, written through ``write`` at most every ``interval_s`` seconds.

    ``steps``: the steps the epoch will take; ``clock``: seconds (injected for tests). Call
    :meth:`step` after every optimisation step with the images it took (over all processes);
    the loss, which lives on the device, is read only when a line is due."""

    def __init__(
        self,
        epoch: int,
        epochs: int,
        steps: int,
        interval_s: float,
        write: Callable[[str], None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.interval_s, self.write, self.clock = interval_s, write, clock
        self.started = self.last = clock()
        self.done = 0
        self.images = 0

    def step(self, images: int, loss: Callable[[], float]) -> None:
        """Count a step; write a line if ``interval_s`` has passed since the last one (or the epoch's start)."""
        self.done += 1
        self.images += images
        now = self.clock()
        if now - self.last < self.interval_s:
            return
        self.last = now
        self.write(self.line(now - self.started, loss()))

    def line(self, elapsed: float, loss: float) -> str:
        rate = self.images / elapsed if elapsed > 0 else 0.0
        left = elapsed / self.done * (self.steps - self.done)
        return (
            f"epoch {self.epoch}/{self.epochs}  step {self.done}/{self.steps}  loss {loss:.4f}  "
            f"{rate:.0f} img/s  {duration(left)} left"
        )
