"""Progress display of a training run: a tqdm bar on a terminal, otherwise a log line every 10% or 30 s."""

from __future__ import annotations

import math
import os
import shutil
import sys
import time


def say(text: str) -> None:
    """``print`` that survives a closed stdout (``acktr train ... | head -1``): the run goes on silently and
    still saves its model, instead of dying at the next progress line."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class Progress:
    """Env steps done, steps/s, the recent mean return and the time left.

    The last rollout of a run usually ends past ``total`` (rollouts are ``n_envs × n_steps`` long): the
    display then shows 100% and no time left, never more.
    """

    def __init__(self, total: int, start: int, bar: bool) -> None:
        self.total, self.start = total, start
        self.bar = None
        self.start_time = time.perf_counter()
        self.last_line_time = self.start_time
        self.next_line_step = start + max(1, total // 10)
        if bar:
            from tqdm import tqdm

            # nrows: tqdm hides bars below the last terminal row, and some pseudo-terminals report 0 rows
            rows = max(2, shutil.get_terminal_size().lines)
            self.bar = tqdm(total=total, initial=min(start, total), unit="step", smoothing=0.1, nrows=rows)

    def update(self, step: int, mean_return: float | None) -> None:
        if self.bar is not None:
            self.bar.update(max(0, min(step, self.total) - self.bar.n))
            if mean_return is not None:
                self.bar.set_postfix_str(f"return {mean_return:.1f}", refresh=False)
            return
        now = time.perf_counter()
        if step >= self.next_line_step or now - self.last_line_time >= 30.0:
            say(self.line(step, mean_return))
            self.last_line_time = now
            while self.next_line_step <= step:
                self.next_line_step += max(1, self.total // 10)

    def line(self, step: int, mean_return: float | None) -> str:
        """``step 20,000/100,000 ( 20%)  12,345 steps/s  mean return 35.2  ETA 0:06``."""
        elapsed = time.perf_counter() - self.start_time
        speed = (step - self.start) / elapsed if elapsed > 0 else 0.0
        remaining = max(0, self.total - step)
        eta = remaining / speed if speed > 0 else (0.0 if remaining == 0 else math.inf)
        percent = min(100.0, 100.0 * step / self.total) if self.total > 0 else 100.0
        returns = "n/a" if mean_return is None else f"{mean_return:.1f}"
        return (
            f"step {min(step, self.total):>10,}/{self.total:,} ({percent:3.0f}%)  {speed:8,.0f} steps/s  "
            f"mean return {returns}  ETA {duration(eta)}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3700`` -> ``"1:01:40"``; ``"?"`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


__all__ = ["Progress", "duration", "say"]
