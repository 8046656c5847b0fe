"""Progress over a whole job: one bar (or, off a terminal, one line per run) for every run of
every data set, split and grid a command evaluates.

The bar says which runs it is on ("runs 3-6 of 24: 4 methods on refshapes/testA"), how many
samples per second, and the time left over the whole job; samples found in the store count as
done at once. Off a terminal (CI, a log file) it prints a line when a group of runs finishes;
with ``enabled=False`` nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class JobProgress:
    def __init__(self, runs: int, enabled: bool = True, stream: TextIO | None = None):
        self.runs, self.enabled = max(1, runs), enabled
        self.stream = stream or sys.stderr
        self.started = 0  # runs begun so far
        self.total = 0  # samples known so far (grows as splits are planned)
        self.done = 0
        self._bar: Any = None
        self._group: tuple[str, float, int] | None = None
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    def plan(self, samples: int) -> None:
        """More work became known (a split planned for some runs)."""
        self.total += samples
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def begin(self, runs: int, what: str, reused: int) -> None:
        """A group of ``runs`` starts (batch-major runs share one group); ``reused`` of its
        samples were already in the store."""
        self.end()
        first, self.started = self.started + 1, self.started + runs
        span = f"run {first}" if runs == 1 else f"runs {first}-{self.started}"
        label = f"{span} of {self.runs}: {what}"
        self._group = (label, time.perf_counter(), self.done)
        if self.tty and self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit="sample", file=self.stream, dynamic_ncols=True)
        if self._bar is not None:
            self._bar.set_description_str(label)
        self.update(reused)

    def update(self, samples: int) -> None:
        self.done += samples
        if self._bar is not None and samples:
            self._bar.update(samples)

    def end(self) -> None:
        """The current group is finished: off a terminal, one line says so."""
        if self._group is None:
            return
        label, since, at = self._group
        self._group = None
        if self.enabled and not self.tty:
            print(f"refbench: {label}: {self.done - at} samples in {time.perf_counter() - since:.1f} s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        self.end()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
