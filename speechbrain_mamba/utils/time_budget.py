"""A wall-clock training budget for SpeechBrain Brains.

The hparam ``train_time_budget_s`` (seconds; ``null``: no budget) ends
training like SpeechBrain's ``optimizer_step_limit``: the clock starts when
``fit`` starts (after the checkpoint is recovered, so a resumed run gets the
whole budget again); once it has run out, no new batch starts, the running
epoch is validated and checkpointed, and ``fit`` returns. A positive budget
lets every ``fit`` train its first batch, however long that batch takes to
come (a run stopped before any batch would validate and save a model its
data never reached, e.g. with no feature statistics); a budget of 0 trains
not at all. Under DDP the decision is taken jointly: a process whose clock
has run out stops every process at the same step (no process waits for a
batch the others never start).

Every Brain of the package mixes in :class:`TrainTimeBudget`; a recipe YAML
sets the budget with::

    train_time_budget_s: 3600  # stop training after an hour (resumable)

Author
------
speechbrain-mamba developers
"""

import logging
import math
import time
import warnings
from typing import Optional

from speechbrain_mamba.utils.distributed import any_rank

logger = logging.getLogger(__name__)

#: The hparam read by :class:`TrainTimeBudget`.
BUDGET_HPARAM = "train_time_budget_s"
#: Its former name in the recognition recipes (still read, with a warning).
DEPRECATED_BUDGET_HPARAM = "training_budget_s"


def train_time_budget(hparams) -> Optional[float]:
    """The training budget in seconds set by a Brain's hparams.

    Arguments
    ---------
    hparams : object or dict
        The Brain's ``hparams`` (attributes) or a hparams dict.

    Returns
    -------
    float or None
        None when there is no budget.

    Raises
    ------
    ValueError
        If the budget is negative or not a number.

    Example
    -------
    >>> train_time_budget({"train_time_budget_s": 90}), train_time_budget({})
    (90.0, None)
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     old = train_time_budget({"training_budget_s": 5})
    >>> old, caught[0].category.__name__
    (5.0, 'DeprecationWarning')
    >>> train_time_budget({"train_time_budget_s": -1})
    Traceback (most recent call last):
    ...
    ValueError: train_time_budget_s must be >= 0 seconds or null; got -1
    """
    if hparams is None:
        return None
    values = hparams if isinstance(hparams, dict) else vars(hparams)
    name = BUDGET_HPARAM
    budget = values.get(BUDGET_HPARAM)
    if budget is None and values.get(DEPRECATED_BUDGET_HPARAM) is not None:
        name = DEPRECATED_BUDGET_HPARAM
        budget = values[DEPRECATED_BUDGET_HPARAM]
        warnings.warn(
            f"the hparam {DEPRECATED_BUDGET_HPARAM} is deprecated; name it "
            f"{BUDGET_HPARAM}",
            DeprecationWarning,
            stacklevel=2,
        )
    if budget is None:
        return None
    try:
        seconds = float(budget)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be >= 0 seconds or null; got {budget!r}")
    return seconds


class TrainTimeBudget:
    """Mixin of ``speechbrain.Brain``: the ``train_time_budget_s`` hparam
    ends training (see the module docstring). Put it before the Brain class:
    ``class MyBrain(TrainTimeBudget, sb.Brain)``.

    Example
    -------
    >>> import speechbrain as sb
    >>> import torch
    >>> class Toy(TrainTimeBudget, sb.Brain):
    ...     def compute_forward(self, batch, stage):
    ...         return self.modules.lin(batch)
    ...     def compute_objectives(self, out, batch, stage):
    ...         return out.pow(2).mean()
    >>> data = torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=1)
    >>> brain = Toy({"lin": torch.nn.Linear(1, 1)}, torch.optim.SGD,
    ...             hparams={"train_time_budget_s": 0})
    >>> brain.fit(range(1, 4), data, progressbar=False)
    >>> brain.optimizer_step  # a zero budget: not one step, in no epoch
    0
    >>> brain = Toy({"lin": torch.nn.Linear(1, 1)}, torch.optim.SGD,
    ...             hparams={"train_time_budget_s": 1e-9})
    >>> brain.fit(range(1, 4), data, progressbar=False)
    >>> brain.optimizer_step  # out of time at once, yet the first batch
    1
    >>> brain = Toy({"lin": torch.nn.Linear(1, 1)}, torch.optim.SGD,
    ...             hparams={"train_time_budget_s": None})
    >>> brain.fit(range(1, 3), data, progressbar=False)
    >>> brain.optimizer_step
    8
    """

    _budget_start: Optional[float] = None
    _budget_logged = False
    _budget_first_batch_allowed = False

    def on_fit_start(self):
        """Starts the budget clock (after the parent's checkpoint
        recovery)."""
        super().on_fit_start()
        # a bad value fails here, before training
        train_time_budget(getattr(self, "hparams", None))
        self._budget_start = time.monotonic()
        self._budget_logged = False
        self._budget_first_batch_allowed = False

    @property
    def _optimizer_step_limit_exceeded(self):
        if super()._optimizer_step_limit_exceeded:
            return True
        with warnings.catch_warnings():  # warned once, in on_fit_start
            warnings.simplefilter("ignore", DeprecationWarning)
            budget = train_time_budget(getattr(self, "hparams", None))
        if budget is None or self._budget_start is None:
            return False
        over = time.monotonic() - self._budget_start >= budget
        if budget > 0 and not self._budget_first_batch_allowed:
            # the first check of a fit comes before its first batch, which
            # trains whatever the clock says; every later one stops
            self._budget_first_batch_allowed = True
            over = False
        over = any_rank(over, self.device)  # all processes stop together
        if over and not self._budget_logged:
            logger.info("Training time budget of %.0f s used", budget)
            self._budget_logged = True
        return over
