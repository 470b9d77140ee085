"""Progress in a log file: whole lines (no carriage returns), about one per 10% with rate and ETA; bars in a terminal."""

from __future__ import annotations

import io

from tqdm import tqdm

from dinoloc import progress as progress_mod
from dinoloc.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_about_one_line_per_tenth_with_rate_and_eta(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    log = io.StringIO()
    for _ in progress(range(1000), desc="extract", unit="img", file=log):
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 10  # 10%, 20%, ... 100%
    assert lines[-1].startswith("extract: 1000/1000 img (100%)")
    assert all("img/s" in line and "<" in line for line in lines)  # rate and elapsed<ETA on every line


def test_a_file_gets_a_line_each_minute_of_a_slow_bar(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    clock = iter(float(t) for t in range(0, 100000, 61))  # each update comes 61 s after the last
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    log = io.StringIO()
    bar = progress(total=1000, desc="DINO epoch 1/1", file=log, leave=False)
    for _ in range(3):
        bar.update(1)  # 0.1% each: no 10% step, but a minute has passed
    bar.close()
    assert len(log.getvalue().splitlines()) == 3


def test_a_short_repeated_bar_stays_silent_in_a_file(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    log = io.StringIO()
    for _ in progress(range(200), desc="classifier epochs", leave=False, file=log):
        pass
    assert log.getvalue() == ""


def test_a_terminal_keeps_tqdms_bar_and_tqdm_disable_silences_both(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert isinstance(progress(range(3), desc="x", file=_Terminal()), tqdm)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    log = io.StringIO()
    for _ in progress(range(100), desc="x", file=log):
        pass
    assert log.getvalue() == ""
