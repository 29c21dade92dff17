"""Training logs: scalars over steps to TensorBoard (--report-to tensorboard) and a loss history for results.json;
progress that stays readable when the output goes to a file.

A run sets its log with `logging_to(RunLog(...))`; code anywhere below it (the shared loop, the Betty
problems) writes with `current().scalar(tag, value, step)`, so no signature carries a logger. Outside a
run `current()` is a log that keeps nothing.

Tags: `<stage>/loss` and `<stage>/lr` of the shared loop (train, phase2, ...); `phase1/<problem>/loss`,
`/lr` and `/grad_norm` of the Betty problems (the attention's grad_norm: its direct gradient plus the
hypergradient); `attention/<module>` the mean of A per mixed module after each upper step; `eval/<metric>`.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from pathlib import Path

REPORT_TO = ("tensorboard", "none")


class RunLog:
    """Scalars of one run: kept in memory (the loss history) and, with a folder, written for TensorBoard."""

    def __init__(self, log_dir: str | Path | None = None, report_to: str = "none"):
        self.history: dict[str, list[list[float]]] = {}
        self.writer = None
        if report_to == "tensorboard" and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))
        self.enabled = log_dir is not None

    def scalar(self, tag: str, value, step: int) -> None:
        if not self.enabled:
            return
        value = float(value)
        self.history.setdefault(tag, []).append([int(step), value])
        if self.writer is not None:
            self.writer.add_scalar(tag, value, int(step))

    def loss_history(self) -> dict[str, list[list[float]]]:
        """{tag: [[step, loss], ...]} of every loss logged, values rounded for results.json."""
        return {tag: [[s, round(v, 6)] for s, v in points] for tag, points in self.history.items() if tag.endswith("/loss")}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


_current = RunLog()


def current() -> RunLog:
    return _current


@contextlib.contextmanager
def logging_to(log: RunLog):
    """Make `log` the current one for the duration; closes it at the end."""
    global _current
    previous, _current = _current, log
    try:
        yield log
    finally:
        _current = previous
        log.close()


def stage_tag(desc: str) -> str:
    """'phase 2 (A fixed)' -> 'phase2', 'FTFT reference' -> 'ftft_reference', 'train' -> 'train'."""
    head = desc.split("(")[0].strip().lower()
    return re.sub(r"(?<=[a-z]) (?=\d)", "", head).replace(" ", "_") or "train"


# ------------------------------------------------------------------------------------------ progress


class LineProgress:
    """tqdm's interface, printing one plain line per tenth of the steps: readable in a log file, where
    tqdm's carriage-return redraws pile up into one unreadable line."""

    def __init__(self, total: int, initial: int, desc: str, unit: str = "step"):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.started, self.start_n, self.postfix = time.perf_counter(), initial, ""
        self.next_report = self._next(initial)

    def _next(self, n: int) -> int:
        tenth = max(1, self.total // 10)
        return (n // tenth + 1) * tenth

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next_report or self.n == self.total:
            done = self.n - self.start_n
            rate = (time.perf_counter() - self.started) / done if done else 0.0
            extra = f", {self.postfix}" if self.postfix else ""
            units = self.unit + ("es" if self.unit.endswith("ch") else "s")
            print(f"{self.desc}: {self.n}/{self.total} {units} ({rate:.2f} s/{self.unit}{extra})", file=sys.stderr, flush=True)
            self.next_report = self._next(self.n)

    def close(self) -> None:
        pass


def quiet_library_bars() -> None:
    """Off a terminal, silence the per-call bars of datasets (tokenizing) and transformers (loading weights)."""
    if sys.stderr.isatty():
        return
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
