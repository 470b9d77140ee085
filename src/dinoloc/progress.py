"""Progress that reads well where it lands: tqdm's bars in a terminal; in a file (a SLURM or `make demo` log) a
whole line at each ~10% step and at least once a minute, with the rate and the ETA, and no carriage returns.
Every stage's progress goes through `progress` (one place decides)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

LINE_EVERY_S = 60.0  # a log line at least this often while a bar runs (a file only)
_open: list[_LineProgress] = []


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "it",
             initial: int = 0, disable: bool = False, leave: bool = True, file: TextIO | None = None) -> Any:
    """A progress bar over `iterable` (or updated by hand with `.update(n)`). `leave=False` marks a short, repeated
    bar (one per fold or epoch): in a file it prints only once it has run for a minute."""
    stream = file if file is not None else sys.stderr
    disable = disable or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")  # tqdm's own switch
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave,
                    dynamic_ncols=True, file=stream)
    return _LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                         leave=leave, file=stream)


def close_all() -> None:
    """End every open bar's line, so a message that follows starts on its own line (Ctrl-C during a stage)."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    for line in list(_open):
        line.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _LineProgress:
    """tqdm's figures as whole lines: one per ~10% of `total` (a repeated bar: none) or per LINE_EVERY_S."""

    def __init__(self, iterable: Iterable | None, *, total: int | None, desc: str, unit: str, initial: int,
                 disable: bool, leave: bool, file: TextIO):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.disable, self.leave, self.file = disable, leave, file
        self.postfix = ""
        self.start = self.last_line = time.monotonic()
        self.last_step = self._step()
        self.printed_n = initial
        if not disable:
            _open.append(self)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        if self.disable:
            return
        self.n += n
        now, step = time.monotonic(), self._step()
        if (self.leave and step is not None and step > self.last_step) or now - self.last_line >= LINE_EVERY_S:
            self._line(now)
        self.last_step = step if step is not None else self.last_step

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.disable:
            return
        # the last state, unless it was just printed; a repeated bar that never printed stays silent
        if self.n != self.printed_n and (self.leave or self.printed_n != self.initial):
            self._line(time.monotonic())
        self.disable = True
        if self in _open:
            _open.remove(self)

    def _step(self) -> int | None:
        return int(10 * self.n / self.total) if self.total else None

    def _line(self, now: float) -> None:
        meter = tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc, unit=self.unit,
                                  initial=self.initial, postfix=self.postfix or None,
                                  bar_format="{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) "
                                             "[{elapsed}<{remaining}, {rate_fmt}{postfix}]"
                                  if self.total else "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]")
        print(meter, file=self.file, flush=True)
        self.last_line, self.printed_n = now, self.n
