"""An epoch counter that also stops after a wall-clock training budget.

Used to compare models "for the same training time"
(:mod:`speechbrain_mamba.benchmarks.asr_train_compare`): put it in place of
SpeechBrain's ``EpochCounter`` in a recipe YAML::

    epoch_counter: !new:speechbrain_mamba.asr.epoch_budget.WallClockEpochCounter
        limit: !ref <number_of_epochs>
        budget_s: !ref <training_budget_s>   # null: no budget

Training stops at the first epoch boundary after ``budget_s`` seconds (the
epoch that crosses the budget finishes, with its validation and
checkpoint). The epoch number is checkpointed as usual; the budget counts
from the first epoch of this process.

Author
------
speechbrain-mamba developers
"""

import logging
import time
from typing import Optional

from speechbrain.utils.epoch_loop import EpochCounter

logger = logging.getLogger(__name__)


class WallClockEpochCounter(EpochCounter):
    """``EpochCounter`` with a wall-clock budget.

    Arguments
    ---------
    limit : int
        Maximum number of epochs.
    budget_s : float, optional
        Training time after which no new epoch starts (None: no budget,
        exactly SpeechBrain's ``EpochCounter``).

    Example
    -------
    >>> counter = WallClockEpochCounter(limit=5, budget_s=0.0)
    >>> list(counter)
    [1]
    >>> list(WallClockEpochCounter(limit=3, budget_s=None))
    [1, 2, 3]
    """

    def __init__(self, limit: int, budget_s: Optional[float] = None):
        super().__init__(limit)
        if budget_s is not None and budget_s < 0:
            raise ValueError(f"budget_s must be >= 0; got {budget_s}")
        self.budget_s = budget_s
        self._start = None
        self.elapsed_s = 0.0

    def __next__(self) -> int:
        if self._start is None:
            self._start = time.monotonic()
        elif self.budget_s is not None:
            self.elapsed_s = time.monotonic() - self._start
            if self.elapsed_s >= self.budget_s:
                logger.info(
                    "Training budget of %.0f s used after epoch %d",
                    self.budget_s,
                    self.current,
                )
                raise StopIteration
        return super().__next__()
