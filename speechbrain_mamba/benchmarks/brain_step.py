"""Timing the separation recipes' own ``Brain`` step: what a user of the
WSJ0-mix / LibriMix recipes (or of SpeechBrain's recipes with the encoder
swapped in YAML) waits for per batch.

:func:`separation_brain` wraps the encoder, mask network and decoder of a
benchmark model (:mod:`speechbrain_mamba.benchmarks.models`) in the
recipes' :class:`~speechbrain_mamba.separation.brain.SeparationBrain` with
the WSJ0-2mix recipe's hyperparameters (two speakers at 8 kHz, Adam at the
recipe's learning rate, PIT SI-SNR loss, gradient clipping at 5, the loss
threshold of -40 dB, no augmentation) and no checkpointer.
:func:`brain_step` returns the timed call:

- ``train``: ``brain.fit_batch(batch)``, SpeechBrain's training step
  (autocast of the ``precision`` run option, ``compute_forward``,
  ``compute_objectives``, backward, gradient clipping, optimizer step,
  ``zero_grad``), after the preparation of ``Brain.fit``
  (``on_fit_start``: optimizer; modules in train mode);
- ``infer``: ``brain.compute_forward(batch, sb.Stage.TEST)`` under
  ``torch.no_grad()`` and the evaluation autocast, modules in eval mode:
  ``SeparationBrain.evaluate_batch`` without its loss and metrics.

The batch is a :class:`speechbrain.dataio.batch.PaddedBatch` on the host,
as the recipes' data loaders give it (``compute_forward`` moves it to the
device, which is part of the timed step). The mask network's own options
(Mamba-TasNet's self-recorded CUDA graphs) are left as they are: they are
what a user of the Brain gets.

Author
------
speechbrain-mamba developers
"""

import functools
from typing import Callable, Dict, Optional

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from speechbrain_mamba.benchmarks.timing import measure
from speechbrain_mamba.separation.brain import SeparationBrain

#: SpeechBrain's ``precision`` run option of each autocast dtype.
PRECISIONS = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
}
#: Modes of :func:`brain_step`.
BRAIN_MODES = ("train", "infer")
#: The WSJ0-2mix recipe's hyperparameters that a training step reads
#: (recipes/WSJ0Mix/separation/hparams/*.yaml), augmentation off.
RECIPE_HPARAMS = {
    "num_spks": 2,
    "sample_rate": 8000,
    "loss": get_si_snr_with_pitwrapper,
    "clip_grad_norm": 5,
    "loss_upper_lim": 999999,
    "threshold_byloss": True,
    "threshold": -40,
    "use_speedperturb": False,
    "use_wavedrop": False,
    "limit_training_signal_len": False,
}
#: The recipes' Adam learning rate.
RECIPE_LR = 1.5e-4


def separation_batch(
    seconds: float,
    batch_size: int,
    sample_rate: int = 8000,
    num_spks: int = 2,
    seed: int = 0,
) -> PaddedBatch:
    """A synthetic batch of mixtures as the recipes' data pipeline gives
    it: keys ``id``, ``mix_sig`` and ``s1_sig`` ... ``s<num_spks>_sig``,
    every item ``seconds`` long, the mixture the sum of its sources
    (Gaussian noise), on the host.

    Arguments
    ---------
    seconds : float
        Duration of each item (at least one sample).
    batch_size : int
        Number of items.
    sample_rate : int
        Samples per second.
    num_spks : int
        Number of sources.
    seed : int
        Seed of the generator of the sources.

    Returns
    -------
    PaddedBatch

    Example
    -------
    >>> batch = separation_batch(0.5, 2)
    >>> batch.mix_sig.data.shape, batch.id
    (torch.Size([2, 4000]), ['mix0', 'mix1'])
    >>> bool(torch.equal(batch.mix_sig.data,
    ...                  batch.s1_sig.data + batch.s2_sig.data))
    True
    """
    samples = int(round(seconds * sample_rate))
    if samples < 1 or batch_size < 1 or num_spks < 1:
        raise ValueError(
            "need at least one sample, item and source; got seconds="
            f"{seconds}, batch_size={batch_size}, num_spks={num_spks}"
        )
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(batch_size):
        sources = torch.randn(num_spks, samples, generator=g)
        item = {"id": f"mix{i}", "mix_sig": sources.sum(0)}
        item.update({f"s{k + 1}_sig": s for k, s in enumerate(sources)})
        items.append(item)
    return PaddedBatch(items)


def separation_brain(
    model: torch.nn.Module,
    device="cpu",
    precision: str = "fp32",
    cuda_graphs: bool = False,
    lr: float = RECIPE_LR,
) -> SeparationBrain:
    """The recipes' Brain around a separation model's modules.

    Arguments
    ---------
    model : torch.nn.Module
        A model with ``encoder``, ``masknet`` and ``decoder`` (e.g.
        :func:`~speechbrain_mamba.benchmarks.models.mamba_tasnet`,
        :func:`~speechbrain_mamba.benchmarks.models.sepformer`); the Brain
        trains these very modules (moved to ``device``).
    device : str or torch.device
        SpeechBrain's ``device`` run option.
    precision : str
        SpeechBrain's ``precision`` run option ("fp32", "bf16", "fp16"),
        also used as ``eval_precision``.
    cuda_graphs : bool
        The recipes' ``cuda_graphs`` hparam (the mask network's training
        forward and backward replayed through
        :class:`~speechbrain_mamba.utils.graphed_training.GraphedTraining`).
    lr : float
        Adam's learning rate.

    Returns
    -------
    SeparationBrain
        No checkpointer; the optimizer is made by ``on_fit_start``
        (:func:`brain_step` calls it).

    Example
    -------
    >>> from speechbrain_mamba.benchmarks.models import mamba_tasnet
    >>> model = mamba_tasnet("XS")
    >>> brain = separation_brain(model)
    >>> brain.modules.masknet is model.masknet, brain.checkpointer
    (True, None)
    """
    missing = [
        name
        for name in ("encoder", "masknet", "decoder")
        if not isinstance(getattr(model, name, None), torch.nn.Module)
    ]
    if missing:
        raise ValueError(
            f"{type(model).__name__} has no {', '.join(missing)} module: "
            "the separation Brain needs an encoder, a masknet and a decoder"
        )
    if precision not in PRECISIONS.values():
        raise ValueError(
            f"precision must be one of {sorted(PRECISIONS.values())}, got "
            f"{precision!r}"
        )
    hparams = dict(RECIPE_HPARAMS, cuda_graphs=bool(cuda_graphs))
    hparams["num_spks"] = getattr(model, "num_spks", hparams["num_spks"])
    return SeparationBrain(
        modules={
            "encoder": model.encoder,
            "masknet": model.masknet,
            "decoder": model.decoder,
        },
        opt_class=functools.partial(torch.optim.Adam, lr=lr, weight_decay=0),
        hparams=hparams,
        run_opts={
            "device": str(device),
            "precision": precision,
            "eval_precision": precision,
        },
        checkpointer=None,
    )


def brain_step(
    brain: SeparationBrain, batch: PaddedBatch, mode: str
) -> Callable[[], torch.Tensor]:
    """Prepares the Brain like ``fit`` (train) or ``evaluate`` (infer)
    do and returns the step to time.

    Arguments
    ---------
    brain : SeparationBrain
        From :func:`separation_brain`.
    batch : PaddedBatch
        From :func:`separation_batch`.
    mode : str
        "train": ``brain.fit_batch(batch)``, which returns the detached
        loss; "infer": ``brain.compute_forward(batch, TEST)`` without
        gradients, which returns the ``[B, T, num_spks]`` estimates.

    Returns
    -------
    callable
        The step.

    Example
    -------
    >>> from speechbrain_mamba.benchmarks.models import mamba_tasnet
    >>> brain = separation_brain(mamba_tasnet("XS"))
    >>> step = brain_step(brain, separation_batch(0.05, 1), "train")
    >>> loss = step()
    >>> brain.optimizer_step, bool(torch.isfinite(loss))
    (1, True)
    """
    if mode not in BRAIN_MODES:
        raise ValueError(f"mode must be one of {BRAIN_MODES}, got {mode!r}")
    if mode == "train":
        if getattr(brain, "optimizer", None) is None:
            brain.on_fit_start()  # SpeechBrain's: compile, DDP, optimizer
        brain.on_stage_start(sb.Stage.TRAIN)
        brain.modules.train()
        brain.zero_grad(set_to_none=True)
        brain.nonfinite_count = 0

        def step():
            return brain.fit_batch(batch)

        return step

    brain.on_stage_start(sb.Stage.TEST)
    brain.modules.eval()

    def step():
        with torch.no_grad(), brain.evaluation_ctx:
            est, _, _ = brain.compute_forward(batch, sb.Stage.TEST)
        return est

    return step


def measure_brain_step(
    brain: SeparationBrain,
    batch: PaddedBatch,
    mode: str,
    repeats: int = 3,
    warmup: int = 1,
) -> Dict[str, Optional[float]]:
    """Times :func:`brain_step` with
    :func:`~speechbrain_mamba.benchmarks.timing.measure` (CUDA synchronised,
    peak CUDA memory). The first call is untimed and its peak memory counts
    too: a mask network that records its own CUDA graphs (or the recipes'
    ``cuda_graphs``) allocates their memory pool in it.

    Arguments
    ---------
    brain : SeparationBrain
        From :func:`separation_brain`.
    batch : PaddedBatch
        From :func:`separation_batch`.
    mode : str
        "train" or "infer".
    repeats : int
        Timed calls (median reported).
    warmup : int
        Untimed calls, the first included (at least one is made).

    Returns
    -------
    dict
        The :func:`~speechbrain_mamba.benchmarks.timing.measure` result
        (``seconds``, ``runs``, ``peak_mib``, ``oom``) and ``cuda_graph``:
        whether the recipes' ``cuda_graphs`` option recorded graphs of the
        mask network.

    Example
    -------
    >>> from speechbrain_mamba.benchmarks.models import mamba_tasnet
    >>> brain = separation_brain(mamba_tasnet("XS"))
    >>> result = measure_brain_step(brain, separation_batch(0.05, 1),
    ...                             "infer", repeats=2)
    >>> result["runs"], result["oom"], result["cuda_graph"]
    (2, False, False)
    """
    device = torch.device(brain.device)
    on_gpu = device.type == "cuda"
    try:
        step = brain_step(brain, batch, mode)
        if on_gpu:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        step()
        first_peak = (
            torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else None
        )
    except torch.OutOfMemoryError:
        if on_gpu:
            torch.cuda.empty_cache()
        result = {"seconds": None, "runs": 0, "peak_mib": None, "oom": True}
        return dict(result, cuda_graph=False)
    result = measure(
        step, device=device, repeats=repeats, warmup=max(0, warmup - 1)
    )
    if first_peak is not None and result["peak_mib"] is not None:
        result["peak_mib"] = max(result["peak_mib"], first_peak)
    graphed = getattr(brain, "_graphed_masknet", None)
    result["cuda_graph"] = bool(graphed is not None and graphed.num_graphs)
    return result
