"""The budget's clock and its shares: seconds spent across resumed attempts, and how much of
the budget each phase may take."""

from __future__ import annotations

import time

VAL_SHARE = 0.04  # of the budget, at most, for one validation pass (fewer pairs if needed)
PROBE_SHARE = 0.08  # of the training time, at most, for the probes
HALVING_SHARE = 0.45  # of the training time, for successive halving; the rest to the winner
LEVER_SHARE = 0.3  # of the final's time, at most, for a lever where training's slope is unknown
# of the time left, at most, for a start's end (validation, test set) if it trains: at 0.5,
# big6 at 20m gave no start time to train (x4plus-anime's end ~8.9 min of the 17.4 left), where
# 10.9 minutes of training had gained 1.2 dB; a short training that stays under bicubic on
# validation is replaced by bicubic at the end (``floor_at_bicubic``)
END_SHARE = 0.6


class Clock:
    """Seconds spent on the run, across resumed attempts."""

    def __init__(self, budget: float, spent_before: float = 0.0) -> None:
        self.budget, self.spent_before, self.start = budget, spent_before, time.monotonic()

    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
