"""Token accuracy and negative log-likelihood of codec language models.

Author
------
speechbrain-mamba developers
"""

from typing import Dict

import torch
import torch.nn.functional as F

from speechbrain_mamba.lobes.tts.common import IGNORE_INDEX


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not ``IGNORE_INDEX``.

    Arguments
    ---------
    logits : torch.Tensor
        [..., vocab].
    targets : torch.Tensor
        [...] long.

    Returns
    -------
    torch.Tensor
        Scalar (fp32).

    Example
    -------
    >>> logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    >>> round(token_nll(logits, torch.tensor([0, -100])).item(), 4)
    0.6931
    """
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


class TokenStats:
    """Accumulates top-1 accuracy and NLL over batches.

    Example
    -------
    >>> stats = TokenStats()
    >>> logits = torch.log(torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    >>> stats.append(logits, torch.tensor([0, 0]))
    >>> summary = stats.summarize()
    >>> summary["acc"], round(summary["nll"], 4), summary["tokens"]
    (0.5, 0.837, 2)
    """

    def __init__(self):
        self.nll_sum = 0.0
        self.correct = 0
        self.count = 0

    @torch.no_grad()
    def append(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Adds a batch.

        Arguments
        ---------
        logits : torch.Tensor
            [..., vocab].
        targets : torch.Tensor
            [...] long; ``IGNORE_INDEX`` entries are skipped.
        """
        logits = logits.float().reshape(-1, logits.shape[-1])
        targets = targets.reshape(-1)
        keep = targets != IGNORE_INDEX
        if not bool(keep.any()):
            return
        logits, targets = logits[keep], targets[keep]
        nll = F.cross_entropy(logits, targets, reduction="sum")
        self.nll_sum += float(nll)
        self.correct += int((logits.argmax(-1) == targets).sum())
        self.count += int(targets.numel())

    def summarize(self) -> Dict[str, float]:
        """``acc`` (top-1 accuracy), ``nll`` (nats per token), ``tokens``."""
        if self.count == 0:
            return {"acc": float("nan"), "nll": float("nan"), "tokens": 0}
        return {
            "acc": self.correct / self.count,
            "nll": self.nll_sum / self.count,
            "tokens": self.count,
        }
