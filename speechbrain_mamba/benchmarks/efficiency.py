"""The efficiency study of Speech Slytherin: time and memory against input
duration, Mamba models side by side with their SpeechBrain peers.

For each task pair (separation: Mamba-TasNet vs SepFormer; recognition:
ConMamba vs Conformer encoders; synthesis: VALL-M vs VALL-E codec language
models) it measures, in one run, for every duration and dtype:

- ``train``: a training step (forward, loss, backward; for tts the joint
  AR + NAR loss on random phonemes and 8-codebook codes at 75 frames/s),
- ``infer``: inference (no-grad forward; for tts the NAR pass over the
  whole duration),
- ``ar-step`` (tts only): the per-token latency of AR generation at that
  output length: the AR cache is filled with a prompt of that many seconds
  of tokens in one forward pass, then single-token decoding steps are
  timed (median), with the peak memory during the steps. Mamba carries a
  fixed-size state, the Transformer a key/value cache that grows.

Harnesses (``--harness``, the ``harness`` column):

- ``brain`` (default; separation): the separation recipes' own SpeechBrain
  ``Brain`` (:mod:`speechbrain_mamba.benchmarks.brain_step`): ``train``
  times ``SeparationBrain.fit_batch`` (autocast of SpeechBrain's
  ``precision``, PIT SI-SNR loss, backward, gradient clipping, Adam step)
  and ``infer`` times ``compute_forward(batch, Stage.TEST)`` without
  gradients, on a batch of the recipes' data pipeline; what a user of the
  recipes waits for. These are the study's headline separation rows.
- ``module``: ``model(x)`` (plus, in training, a mean-square loss and its
  backward, no optimizer) on a tensor already on the device. The asr and
  tts tasks always use it (no such Brain here for their benchmark
  models).

Times are medians over several repetitions after warm-up (CUDA
synchronised), memory is peak CUDA memory, OOM is recorded as such. The
Mamba model and its peer are measured in turn for each duration, mode and
dtype (one after the other, the idle model parked in host memory), so that
both see the same state of the machine; ``--rounds R`` repeats every such
pair R times, interleaved, the Mamba model first in even rounds and second
in odd ones, and each ratio is the median of the R per-round ratios, with
their range beside it (a GPU's step times drift by tens of percent between
minutes of one session). The plot shows each model's median time over the
rounds. It writes

- ``results.csv`` / ``results.jsonl``: one row per measurement,
- ``ratios.csv``: peer / Mamba time and memory ratios (> 1: Mamba better;
  medians over the rounds, ``time_ratio_min`` / ``time_ratio_max`` their
  range),
- ``thresholds.json``: the shortest duration from which Mamba wins,
- ``efficiency.png``: time and memory against duration, one panel per task
  and metric (the AR step of tts in panels of its own).

Usage::

    python -m speechbrain_mamba.benchmarks.efficiency --out results/eff \\
        [--tasks separation asr tts] [--seconds 1 2 4 8 16 32 60] \\
        [--modes train infer ar-step] [--dtypes float32 bfloat16] \\
        [--device cuda] [--tts-size paper] [--ar-steps 50] \\
        [--harness brain|module] [--no-self-graphs] [--rounds 3] \\
        [--low-memory auto|true|false]

The Mamba models replay their calls from CUDA graphs they record by
themselves (the ``cuda_graphs`` option of Mamba-TasNet's mask net, of
VALL-M's Mamba stacks and AR step and of the ConMamba encoder, on by
default: what SpeechBrain's own training and inference get, in both
harnesses);
``--no-self-graphs`` (alias ``--no-masknet-graphs``) times their eager
calls instead (the eager rows beside). The ``self_graphs`` column counts
the graphs they have recorded so far (one per batch size, bucket of lengths
and training or inference); the peak memory of their rows includes the
recording call.

Author
------
speechbrain-mamba developers
"""

import argparse
import contextlib
import gc
import json
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from speechbrain_mamba.benchmarks.brain_step import (
    PRECISIONS,
    measure_brain_step,
    separation_batch,
    separation_brain,
)
from speechbrain_mamba.benchmarks.models import TASKS
from speechbrain_mamba.benchmarks.timing import measure
from speechbrain_mamba.lobes.tts.factory import SIZES as TTS_SIZES
from speechbrain_mamba.utils.atomic import (
    atomic_target,
    atomic_write_csv,
    atomic_write_text,
)
from speechbrain_mamba.utils.bucketed_graphs import self_graphed_modules
from speechbrain_mamba.utils.cli import positive_float, positive_int
from speechbrain_mamba.utils.cuda_graphs import record_cuda_graph
from speechbrain_mamba.utils.graphed_inference import outermost_graphed_call
from speechbrain_mamba.utils.graphed_training import GraphedTraining
from speechbrain_mamba.utils.per_tensor_cache import forget

DEFAULT_SECONDS = {
    "separation": [1, 2, 4, 8, 16, 32, 60],
    "asr": [5, 10, 20, 40, 80, 160, 320],
    "tts": [3, 10, 30, 60],
}
DEFAULT_BATCH = {"separation": 1, "asr": 8, "tts": 1}
#: Every mode, and the modes each task has.
MODES = ("train", "infer", "ar-step")
TASK_MODES = {
    "separation": ("train", "infer"),
    "asr": ("train", "infer"),
    "tts": MODES,
}
#: Untimed calls before the timed ones, per mode (the first AR steps grow
#: the key/value buffers).
WARMUP = {"train": 1, "infer": 1, "ar-step": 3}
#: (task, mode) never put in a CUDA graph: the TTS models check their token
#: ids on the host (a GPU sync, which a capture cannot hold).
EAGER_ONLY = {("tts", "train"), ("tts", "infer")}
#: Timing harnesses: the recipe's Brain step, or the bare module call.
HARNESSES = ("brain", "module")
#: Tasks that have a recipe Brain in the study (the others: module).
BRAIN_TASKS = ("separation",)


#: ``--low-memory`` -> the BiMamba layers' ``low_memory``.
LOW_MEMORY = {"auto": "auto", "true": True, "false": False}


def task_harness(task: str, harness: str) -> str:
    """The harness a task is timed with: ``brain`` only for the tasks of
    :data:`BRAIN_TASKS`, ``module`` for the others.

    Arguments
    ---------
    task : str
        A task of :data:`~speechbrain_mamba.benchmarks.models.TASKS`.
    harness : str
        The harness asked for (:data:`HARNESSES`).

    Returns
    -------
    str
        "brain" or "module".

    Example
    -------
    >>> task_harness("separation", "brain"), task_harness("tts", "brain")
    ('brain', 'module')
    """
    if harness not in HARNESSES:
        raise ValueError(f"harness must be one of {HARNESSES}, got {harness!r}")
    return harness if task in BRAIN_TASKS else "module"


def _autocast(device, dtype, for_graph=False):
    """Autocast to ``dtype`` (off for fp32; no cast cache in CUDA graphs)."""
    return torch.autocast(
        torch.device(device).type,
        dtype=dtype,
        enabled=dtype != torch.float32,
        cache_enabled=not for_graph,
    )


def _state_slots(state):
    """(holder, attribute, tensor) of each tensor of an AR decoding state."""
    cache = state.cache if isinstance(state.cache, list) else [state.cache]
    return [
        (holder, name, value)
        for holder in [state, *cache]
        for name, value in vars(holder).items()
        if isinstance(value, torch.Tensor)
    ]


def make_ar_step(
    model: torch.nn.Module,
    batch: Dict[str, torch.Tensor],
    dtype: torch.dtype,
    device,
    for_graph: bool = False,
) -> Callable[[], None]:
    """Fills ``model.ar``'s cache with the batch's phonemes and first
    codebook (one forward pass) and returns a callable that decodes one
    more token (greedy, EOS excluded) through the cache.

    With ``for_graph``, each step writes its logits and the new state
    tensors back into the tensors the previous step read (static buffers,
    so that a CUDA graph of one step can be replayed); a key/value cache
    still writes the same slot on each replay, which costs what a step at
    that length costs.

    Arguments
    ---------
    model : torch.nn.Module
        A model with an AR decoder ``.ar`` (``CodecAR``), e.g.
        :class:`~speechbrain_mamba.benchmarks.models.CodecLMPair`.
    batch : dict
        From :func:`~speechbrain_mamba.benchmarks.models.tts_batch`: its
        phonemes and first codebook are the prompt.
    dtype : torch.dtype
        Autocast dtype (float32: none).
    device : str or torch.device
        Device of the model and batch.
    for_graph : bool
        Static buffers (see above) and no autocast cast cache.

    Returns
    -------
    callable
        One decoding step; its ``state`` attribute is the decoding state.

    Example
    -------
    >>> from speechbrain_mamba.benchmarks.models import tts_batch, vall_m
    >>> step = make_ar_step(vall_m("tiny"), tts_batch(0.1, 1, "cpu"),
    ...                     torch.float32, "cpu")
    >>> step(); step()
    >>> int(step.state.next_position[0])  # BOS + 8 prompt frames + 2
    11
    """
    from speechbrain_mamba.benchmarks.ar_latency import greedy_token, prefill

    ar = getattr(model, "ar", None)
    if ar is None:
        raise ValueError(
            "mode 'ar-step' needs a model with an AR decoder (.ar, task "
            f"tts), got {type(model).__name__}"
        )
    model.eval()
    autocast = _autocast(device, dtype, for_graph)
    with torch.no_grad(), autocast:
        logits, state = prefill(ar, batch["phonemes"], batch["codes"][:, 0])
    # recorded by the caller: the model's own step graph stays out of it
    plain = outermost_graphed_call if for_graph else contextlib.nullcontext

    def step():
        nonlocal logits
        slots = _state_slots(state) if for_graph else []
        with torch.no_grad(), autocast, plain():
            new = ar.step(greedy_token(ar, logits), state)
        if not for_graph:
            logits = new
            return
        logits.copy_(new)
        for holder, name, old in slots:
            value = getattr(holder, name)
            if value.shape == old.shape and value.data_ptr() != old.data_ptr():
                old.copy_(value)
                setattr(holder, name, old)

    step.state = state
    return step


def make_step(
    model: torch.nn.Module,
    x,
    mode: str,
    dtype: torch.dtype,
    device,
    for_graph: bool = False,
    forward: Optional[Callable] = None,
) -> Callable[[], None]:
    """The callable that is timed: a training step, an inference call or
    (mode "ar-step") one AR decoding step after a prefill. A model whose
    training forward returns a scalar is trained on it as the loss, any
    other on the mean square of its output. ``forward`` replaces
    ``model(x)`` in training (e.g. a
    :class:`~speechbrain_mamba.utils.graphed_training.GraphedTraining`)."""
    if mode == "ar-step":
        return make_ar_step(model, x, dtype, device, for_graph)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    model.train(mode == "train")
    autocast = _autocast(device, dtype, for_graph)

    def step():
        if mode == "train":
            with autocast:
                y = (forward or model)(x)
            loss = y.float() if y.dim() == 0 else y.float().pow(2).mean()
            loss.backward()
            if not for_graph:
                model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast:
                model(x)

    return step


def measure_model(
    model: torch.nn.Module,
    x,
    mode: str,
    dtype: torch.dtype,
    device,
    repeats: int,
    graphed: bool = False,
    warmup: int = 1,
) -> Dict:
    """Times one model on one input; returns the measure() dict (and
    whether a CUDA graph was used). With ``graphed`` (CUDA), the step is
    replayed from a CUDA graph, or timed eagerly (reason printed) when it
    cannot be captured."""
    used_graph = False
    step = None
    capture_peak = None
    try:
        on_gpu = torch.device(device).type == "cuda"
        if graphed and on_gpu and mode == "train":
            # the product's path: forward and backward replayed from graphs
            # (GraphedTraining, as the separation recipes' cuda_graphs)
            model.zero_grad(set_to_none=True)
            forward = GraphedTraining(model, max_graphs=1)
            step = make_step(model, x, mode, dtype, device, forward=forward)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            step()  # records the graphs
            capture_peak = torch.cuda.max_memory_allocated(device) / 2**20
            used_graph = forward.num_graphs > 0
        elif graphed and on_gpu:
            model.zero_grad(set_to_none=True)
            graph_step = make_step(model, x, mode, dtype, device, True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            try:
                step = record_cuda_graph(graph_step)[0].replay
                capture_peak = torch.cuda.max_memory_allocated(device) / 2**20
                used_graph = True
            except (RuntimeError, torch.OutOfMemoryError) as err:
                print(
                    f"CUDA graph capture failed for {model_label(model)} "
                    f"{mode} ({err}); timing eagerly"
                )
                del graph_step
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        if step is None:
            step = make_step(model, x, mode, dtype, device)
            if on_gpu and records_own_graphs(model):
                # self-graphed modules record in their first call, which
                # allocates the graphs' memory pool (replays allocate none:
                # the pool's blocks are then reserved, not allocated)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
                step()
                capture_peak = torch.cuda.max_memory_allocated(device) / 2**20
    except torch.OutOfMemoryError:  # e.g. the prefill of an AR step
        torch.cuda.empty_cache()
        return {
            "seconds": None,
            "runs": 0,
            "peak_mib": None,
            "oom": True,
            "cuda_graph": False,
        }
    result = measure(step, device=device, repeats=repeats, warmup=warmup)
    if capture_peak is not None and result["peak_mib"] is not None:
        # the graph's memory pool was allocated while capturing
        result["peak_mib"] = max(result["peak_mib"], capture_peak)
    result["cuda_graph"] = used_graph
    return result


def records_own_graphs(model: torch.nn.Module) -> bool:
    """Whether a sub-module of ``model`` records its own CUDA graphs
    (:class:`~speechbrain_mamba.utils.bucketed_graphs.SelfGraphedModule`
    with ``cuda_graphs`` on).

    Arguments
    ---------
    model : torch.nn.Module
        The timed model.

    Returns
    -------
    bool
        True if one does.

    Example
    -------
    >>> from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
    >>> records_own_graphs(MambaTasNetMaskNet(8, num_layers=1))
    True
    >>> records_own_graphs(torch.nn.Linear(2, 2))
    False
    """
    return any(module.cuda_graphs for module in self_graphed_modules(model))


def model_label(model: torch.nn.Module) -> str:
    """Display name of a study model.

    Arguments
    ---------
    model : torch.nn.Module
        A model of :data:`~speechbrain_mamba.benchmarks.models.TASKS`.

    Returns
    -------
    str
        Its ``name`` (tts), the class of its mask net (separation) or
        encoder (asr), else its own class.

    Example
    -------
    >>> model_label(torch.nn.Linear(2, 2))
    'Linear'
    """
    if hasattr(model, "name"):
        return model.name
    if hasattr(model, "masknet"):
        return type(model.masknet).__name__
    if hasattr(model, "encoder"):
        return type(model.encoder).__name__
    return type(model).__name__


def enable_checkpointing(model: torch.nn.Module) -> int:
    """Turns on gradient checkpointing in every MambaStack of a model."""
    from speechbrain_mamba.nnet import MambaStack

    stacks = [m for m in model.modules() if isinstance(m, MambaStack)]
    for stack in stacks:
        stack.gradient_checkpointing = True
    return len(stacks)


def _bimamba_layers(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The BiMamba layers of a model, in ``model.modules()`` order."""
    from speechbrain_mamba.nnet import BiMamba

    return [m for m in model.modules() if isinstance(m, BiMamba)]


def set_low_memory(model: torch.nn.Module, value: Union[bool, str]) -> int:
    """Sets ``low_memory`` of every BiMamba layer of a model (True or
    "auto": recompute the activations before the scan in backward; False:
    keep them).

    Arguments
    ---------
    model : torch.nn.Module
        Any model.
    value : bool or str
        The layers' new ``low_memory``.

    Returns
    -------
    int
        Layers set.

    Example
    -------
    >>> from speechbrain_mamba.nnet import MambaStack
    >>> stack = MambaStack(8, 2, bidirectional=True, d_state=4)
    >>> set_low_memory(stack, False)
    2
    >>> [layer.mixer.low_memory for layer in stack.layers]
    [False, False]
    """
    layers = _bimamba_layers(model)
    for layer in layers:
        layer.low_memory = value
    return len(layers)


def bimamba_low_memory(model: torch.nn.Module) -> str:
    """The ``low_memory`` settings of a model's BiMamba layers, as a row
    gives them ("" without BiMamba layers).

    Arguments
    ---------
    model : torch.nn.Module
        Any model.

    Returns
    -------
    str
        The distinct settings, lower case, comma separated.

    Example
    -------
    >>> from speechbrain_mamba.nnet import MambaStack
    >>> stack = MambaStack(8, 2, bidirectional=True, d_state=4)
    >>> bimamba_low_memory(stack), bimamba_low_memory(torch.nn.Linear(2, 2))
    ('auto', '')
    """
    values = {str(m.low_memory).lower() for m in _bimamba_layers(model)}
    return ",".join(sorted(values))


def thresholds(rows: List[Dict]) -> Dict[str, Optional[float]]:
    """Shortest duration from which the Mamba model stays better.

    Arguments
    ---------
    rows : list of dict
        Ratio rows (task, mode, dtype, seconds, time_ratio, memory_ratio).

    Returns
    -------
    dict
        "task/mode/dtype/metric" -> seconds (None if never).

    Example
    -------
    >>> rows = [dict(task="t", mode="m", dtype="d", seconds=s, time_ratio=r,
    ...              memory_ratio=None) for s, r in [(1, .5), (2, 1.2), (4, 2)]]
    >>> thresholds(rows)["t/m/d/time"]
    2
    """
    out = {}
    keys = {(r["task"], r["mode"], r["dtype"]) for r in rows}
    for task, mode, dtype in sorted(keys):
        series = sorted(
            (
                r
                for r in rows
                if (r["task"], r["mode"], r["dtype"]) == (task, mode, dtype)
            ),
            key=lambda r: r["seconds"],
        )
        for metric in ("time", "memory"):
            values = [(r["seconds"], r[f"{metric}_ratio"]) for r in series]
            values = [(s, v) for s, v in values if v is not None]
            best = None
            for seconds, ratio in reversed(values):
                if ratio < 1:
                    break
                best = seconds
            out[f"{task}/{mode}/{dtype}/{metric}"] = best
    return out


def _pair_ratio(mamba: Dict, peer: Dict, key: str) -> Optional[float]:
    """peer[key] / mamba[key] (inf where only the peer ran out of memory,
    0 where only the Mamba model did; None where either value is missing)."""
    if peer["oom"] and not mamba["oom"]:
        return float("inf")
    if mamba["oom"] and not peer["oom"]:
        return 0.0
    if mamba[key] and peer[key]:
        return peer[key] / mamba[key]
    return None


def ratio_rows(rows: List[Dict]) -> List[Dict]:
    """Peer / Mamba ratios for every (task, seconds, mode, dtype, harness)
    (rows without a ``harness`` count as "module", without a ``round`` as
    round 0): each round's Mamba row against its peer row of the same
    round, then the median over the rounds, with the range of the time
    ratios.

    Arguments
    ---------
    rows : list of dict
        Result rows.

    Returns
    -------
    list of dict
        One per measured pair: ``time_ratio`` and ``memory_ratio``
        (medians), ``time_ratio_min`` / ``time_ratio_max`` and ``rounds``
        (rounds with both rows).

    Example
    -------
    >>> def row(role, round, seconds_median):
    ...     return dict(task="t", role=role, seconds=1, mode="train",
    ...                 dtype="d", model=role.upper(), round=round, oom=False,
    ...                 seconds_median=seconds_median, peak_mib=None)
    >>> rows = [row("mamba", 0, 1.0), row("peer", 0, 2.0),
    ...         row("mamba", 1, 2.0), row("peer", 1, 2.0),
    ...         row("mamba", 2, 1.0), row("peer", 2, 3.0)]
    >>> r = ratio_rows(rows)[0]
    >>> r["time_ratio"], r["time_ratio_min"], r["time_ratio_max"], r["rounds"]
    (2.0, 1.0, 3.0, 3)
    """
    index = {
        (
            r["task"],
            r["role"],
            r["seconds"],
            r["mode"],
            r["dtype"],
            r.get("harness", "module"),
            r.get("round", 0),
        ): r
        for r in rows
    }
    pairs: Dict[Tuple, List[Tuple[Dict, Dict]]] = {}
    for key, mamba in index.items():
        peer = index.get((key[0], "peer", *key[2:]))
        if key[1] == "mamba" and peer is not None:
            # (task, seconds, mode, dtype, harness): the rounds pooled
            pairs.setdefault((key[0], *key[2:6]), []).append((mamba, peer))
    out = []
    for (task, seconds, mode, dtype, harness), measured in pairs.items():
        ratios = {}
        for name, key in (("time", "seconds_median"), ("memory", "peak_mib")):
            values = [_pair_ratio(m, p, key) for m, p in measured]
            ratios[name] = [v for v in values if v is not None]
        times = ratios["time"]
        out.append(
            {
                "task": task,
                "seconds": seconds,
                "mode": mode,
                "dtype": dtype,
                "harness": harness,
                "mamba": measured[0][0]["model"],
                "peer": measured[0][1]["model"],
                "time_ratio": statistics.median(times) if times else None,
                "memory_ratio": (
                    statistics.median(ratios["memory"])
                    if ratios["memory"]
                    else None
                ),
                "time_ratio_min": min(times) if times else None,
                "time_ratio_max": max(times) if times else None,
                "rounds": len(measured),
            }
        )
    return sorted(
        out,
        key=lambda r: (
            r["task"],
            r["harness"],
            r["mode"],
            r["dtype"],
            r["seconds"],
        ),
    )


def median_rows(rows: List[Dict]) -> List[Dict]:
    """One row per model and measurement: the median time and peak memory
    over its rounds (the rows of one round, unchanged).

    Arguments
    ---------
    rows : list of dict
        Result rows (``round`` optional).

    Returns
    -------
    list of dict
        The first round's row of each measurement, with the medians of
        ``seconds_median`` and ``peak_mib`` over the rounds that have one.

    Example
    -------
    >>> rows = [dict(model="M", task="t", seconds=1, mode="train",
    ...              dtype="d", round=r, seconds_median=t, peak_mib=None)
    ...         for r, t in enumerate([3.0, 1.0, 2.0])]
    >>> [r["seconds_median"] for r in median_rows(rows)]
    [2.0]
    """
    groups: Dict[Tuple, List[Dict]] = {}
    for r in rows:
        key = (
            r["model"], r["task"], r["seconds"], r["mode"], r["dtype"],
            r.get("harness", "module"),
        )  # fmt: skip
        groups.setdefault(key, []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0])
        for key in ("seconds_median", "peak_mib"):
            values = [r[key] for r in group if r[key] is not None]
            row[key] = statistics.median(values) if values else None
        out.append(row)
    return out


def panels(rows: List[Dict]) -> List[Tuple[str, str]]:
    """The plot's columns: (task, "step") for the train / infer modes of a
    task, (task, "ar-step") for its AR decoding steps.

    Arguments
    ---------
    rows : list of dict
        Result rows (task, mode).

    Returns
    -------
    list of (str, str)
        Column keys, by task, each task's "step" column first.

    Example
    -------
    >>> panels([dict(task="tts", mode="ar-step"), dict(task="tts",
    ...         mode="train"), dict(task="asr", mode="infer")])
    [('asr', 'step'), ('tts', 'step'), ('tts', 'ar-step')]
    """
    keys = {
        (r["task"], "ar-step" if r["mode"] == "ar-step" else "step")
        for r in rows
    }
    return sorted(keys, key=lambda key: (key[0], key[1] == "ar-step"))


def plot(rows: List[Dict], path: Path) -> None:
    """Time and memory against duration: one column per task (and one for
    the AR steps of tts), time on top, memory below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    columns = panels(rows)
    fig, axes = plt.subplots(
        2, len(columns), figsize=(5 * len(columns), 8), squeeze=False
    )
    styles = {"train": "-", "infer": "--", "ar-step": "-."}
    for col, (task, group) in enumerate(columns):
        selected = [
            r
            for r in rows
            if r["task"] == task
            and (r["mode"] == "ar-step") == (group == "ar-step")
        ]
        per_token = group == "ar-step"
        for (metric, label), ax in zip(
            [
                (
                    "seconds_median",
                    "time per token (s)" if per_token else "time (s)",
                ),
                ("peak_mib", "peak memory (MiB)"),
            ],
            axes[:, col],
        ):
            combos = sorted(
                {(r["model"], r["mode"], r["dtype"]) for r in selected}
            )
            for model, mode, dtype in combos:
                series = sorted(
                    (
                        r
                        for r in selected
                        if (r["model"], r["mode"], r["dtype"])
                        == (model, mode, dtype)
                        and r[metric]
                    ),
                    key=lambda r: r["seconds"],
                )
                if series:
                    ax.plot(
                        [r["seconds"] for r in series],
                        [r[metric] for r in series],
                        styles.get(mode, "-"),
                        marker="o",
                        label=f"{model} {mode} {dtype}",
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            # the measured durations as plain ticks (no 3x10^0 labels)
            durations = sorted({r["seconds"] for r in selected})
            ax.set_xticks(durations, [f"{d:g}" for d in durations])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(
                "output length (s)" if per_token else "input duration (s)"
            )
            ax.set_ylabel(label)
            ax.set_title(f"{task} AR step" if per_token else task)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_csv(rows: List[Dict], path: Path) -> None:
    """Writes rows to CSV atomically."""
    if rows:
        atomic_write_csv(path, list(rows[0].keys()), rows)


def bimamba_kernels(model: torch.nn.Module) -> str:
    """Which kernels the BiMamba layers of ``model`` ran in their last call
    ("triton", "mamba_ssm" or "torch"; "" without BiMamba layers).

    Arguments
    ---------
    model : torch.nn.Module
        A model that has been run.

    Returns
    -------
    str
        The kinds seen, "+"-joined if layers differed.

    Example
    -------
    >>> from speechbrain_mamba.nnet import BiMamba
    >>> layer = BiMamba(8, d_state=4)
    >>> _ = layer(torch.randn(1, 5, 8))
    >>> bimamba_kernels(torch.nn.Sequential(layer))
    'torch'
    """
    kinds = sorted(
        {
            layer.kernels_used
            for layer in model.modules()
            if getattr(layer, "kernels_used", None)
        }
    )
    return "+".join(kinds)


def plan(args: argparse.Namespace) -> List[Tuple]:
    """The measurements of a run, the modes a task does not have left out
    (with a note).

    Arguments
    ---------
    args : argparse.Namespace
        ``tasks``, ``seconds`` (None: each task's defaults), ``modes``
        and ``dtypes`` (names).

    Returns
    -------
    list of tuple
        (task, role, seconds, mode, dtype, round) in measuring order: per
        task, ``rounds`` (default 1) rounds, in each the Mamba model and its
        peer in turn for every duration, mode and dtype (the Mamba model
        first in even rounds, second in odd ones).

    Example
    -------
    >>> args = argparse.Namespace(tasks=["asr", "tts"], seconds=[1],
    ...     modes=["ar-step"], dtypes=["float32"], rounds=2)
    >>> [job[1::4] for job in plan(args)]  # (role, round)
    asr: no ar-step mode; skipped
    [('mamba', 0), ('peer', 0), ('peer', 1), ('mamba', 1)]
    """
    dtypes = [getattr(torch, d) for d in args.dtypes]
    rounds = getattr(args, "rounds", 1)
    jobs = []
    for task in args.tasks:
        seconds = args.seconds or DEFAULT_SECONDS[task]
        modes = [m for m in args.modes if m in TASK_MODES[task]]
        skipped = [m for m in args.modes if m not in TASK_MODES[task]]
        if skipped:
            print(f"{task}: no {', '.join(skipped)} mode; skipped")
        for turn in range(rounds):
            roles = ("mamba", "peer") if turn % 2 == 0 else ("peer", "mamba")
            for s in seconds:
                for mode in modes:
                    for dtype in dtypes:
                        for role in roles:
                            jobs.append((task, role, s, mode, dtype, turn))
    if not jobs:
        raise ValueError(
            f"nothing to measure: tasks {args.tasks} have none of the "
            f"modes {args.modes} ({TASK_MODES})"
        )
    return jobs


def run(args) -> Dict:
    """Runs the study and writes its outputs; returns the thresholds."""
    from tqdm import tqdm

    device = args.device
    cuda = torch.device(device).type == "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan(args)
    eager_only = sorted({(job[0], job[3]) for job in jobs} & EAGER_ONLY)
    if args.cuda_graphs != "none" and eager_only:
        print(f"timed eagerly, no CUDA graph: {eager_only}")
    harnesses = {task: task_harness(task, args.harness) for task in args.tasks}
    if args.harness == "brain" and "module" in harnesses.values():
        print(
            "module harness (no recipe Brain in the study) for: "
            f"{sorted(t for t, h in harnesses.items() if h == 'module')}"
        )
    brain_infer = {
        job[0]
        for job in jobs
        if harnesses[job[0]] == "brain" and job[3] == "infer"
    }
    if args.cuda_graphs != "none" and brain_infer:
        print(
            "brain harness: the recipes' cuda_graphs option is for training; "
            "inference replays only the mask net's own graphs"
        )
    rows = []
    models = {}
    jsonl = open(out / "results.jsonl", "w")
    for task, role, seconds, mode, dtype, turn in tqdm(jobs, desc="efficiency"):
        mamba_builder, peer_builder, make_input, _ = TASKS[task]
        if any(key[0] != task for key in models):
            models.clear()  # a new task: its two models only
        for key, idle in models.items():
            if key != (task, role):  # parked in host memory meanwhile
                for module in idle.modules():
                    forget(module)  # weights its inference calls derived
                idle.to("cpu")
        if cuda:
            torch.cuda.empty_cache()
        if (task, role) not in models:
            builder = mamba_builder if role == "mamba" else peer_builder
            torch.manual_seed(0)
            model = builder(args.tts_size) if task == "tts" else builder()
            models[(task, role)] = model
            if role == "mamba" and args.checkpointing:
                enable_checkpointing(models[(task, role)])
            if role == "mamba":
                set_low_memory(model, LOW_MEMORY[args.low_memory])
            for module in self_graphed_modules(model):
                module.cuda_graphs = args.self_graphs
        model = models[(task, role)].to(device)
        batch = DEFAULT_BATCH[task] if args.batch is None else args.batch
        graphed = (task, mode) not in EAGER_ONLY and (
            args.cuda_graphs == "both"
            or (args.cuda_graphs == "mamba" and role == "mamba")
        )
        if harnesses[task] == "brain":
            # the recipes' Brain around the model's modules, a fresh
            # optimizer per measurement; graphed: the recipes' cuda_graphs
            brain = separation_brain(
                model,
                device,
                PRECISIONS[dtype],
                cuda_graphs=graphed and mode == "train",
            )
            result = measure_brain_step(
                brain,
                separation_batch(seconds, batch),
                mode,
                args.repeats,
                warmup=WARMUP[mode],
            )
            del brain  # its optimizer state and graphs
            gc.collect()  # also if a reference cycle held them
        else:
            result = measure_model(
                model,
                make_input(seconds, batch, device),
                mode,
                dtype,
                device,
                args.ar_steps if mode == "ar-step" else args.repeats,
                graphed=graphed,
                warmup=WARMUP[mode],
            )
        row = {
            "task": task,
            "role": role,
            "model": model_label(model),
            "params_M": round(
                sum(p.numel() for p in model.parameters()) / 1e6, 2
            ),
            "seconds": seconds,
            "round": turn,
            "batch": batch,
            "mode": mode,
            "dtype": str(dtype).replace("torch.", ""),
            "harness": harnesses[task],
            "device": device,
            "seconds_median": result["seconds"],
            "peak_mib": result["peak_mib"],
            "oom": result["oom"],
            "cuda_graph": result["cuda_graph"],
            "checkpointing": bool(args.checkpointing and role == "mamba"),
            "low_memory": bimamba_low_memory(model),
            "bimamba_kernels": bimamba_kernels(model),
            "self_graphs": sum(
                module.num_cuda_graphs for module in self_graphed_modules(model)
            ),
        }
        rows.append(row)
        jsonl.write(json.dumps(row) + "\n")
        jsonl.flush()
        # the next row's peak memory must not hold this row's graphs
        for module in self_graphed_modules(model):
            module.drop_cuda_graphs()
        if cuda:
            torch.cuda.empty_cache()
    jsonl.close()
    write_csv(rows, out / "results.csv")
    ratios = ratio_rows(rows)
    write_csv(ratios, out / "ratios.csv")
    found = thresholds(ratios)
    atomic_write_text(out / "thresholds.json", json.dumps(found, indent=1))
    plot(median_rows(rows), out / "efficiency.png")
    print(
        "| task | harness | mode | dtype | seconds | time ratio "
        "| range over rounds | memory ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in ratios:
        mem = r["memory_ratio"]
        tr = r["time_ratio"]
        spread = (
            "-"
            if tr is None
            else f"{r['time_ratio_min']:.2f}-{r['time_ratio_max']:.2f} "
            f"({r['rounds']})"
        )
        print(
            f"| {r['task']} | {r['harness']} | {r['mode']} | {r['dtype']} | "
            f"{r['seconds']} | "
            f"{'-' if tr is None else f'{tr:.2f}'} | {spread} | "
            f"{'-' if mem is None else f'{mem:.2f}'} |"
        )
    print(json.dumps(found, indent=1))
    return found


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/efficiency")
    parser.add_argument(
        "--tasks", nargs="+", default=sorted(TASKS), choices=sorted(TASKS)
    )
    parser.add_argument("--seconds", type=positive_float, nargs="+")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(MODES),
        choices=MODES,
        help="ar-step: per-token AR decoding latency (tts only); a mode a "
        "task does not have is skipped",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16", "float16"],
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--batch", type=positive_int)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="measure every Mamba / peer pair this many times, interleaved; "
        "ratios are the medians of the per-round ratios",
    )
    parser.add_argument(
        "--ar-steps",
        type=positive_int,
        default=50,
        help="timed decoding steps of the ar-step mode (median reported)",
    )
    parser.add_argument(
        "--tts-size",
        default="paper",
        choices=sorted(TTS_SIZES),
        help="size of VALL-M / VALL-E (factory sizes; paper: d_model 1024)",
    )
    parser.add_argument("--threads", type=positive_int)
    parser.add_argument(
        "--cuda-graphs",
        choices=["none", "mamba", "both"],
        default="none",
        help="replay from CUDA graphs: in training the model's forward and "
        "backward (GraphedTraining; brain harness: the mask net's, the "
        "recipes' cuda_graphs option), in inference the whole call (module "
        "harness), for ar-step one decoding step with static state buffers",
    )
    parser.add_argument(
        "--harness",
        choices=HARNESSES,
        default="brain",
        help="brain (default): separation through the recipes' Brain "
        "(SeparationBrain.fit_batch for train, compute_forward at the test "
        "stage for infer); module: model(x) and its backward. asr and tts "
        "always use the module harness (no recipe Brain in the study)",
    )
    parser.add_argument(
        "--self-graphs",
        "--masknet-graphs",
        dest="self_graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the CUDA graphs the Mamba models record by themselves (the "
        "cuda_graphs option of Mamba-TasNet's mask net, VALL-M's stacks "
        "and AR step and the ConMamba encoder, on by default, as "
        "SpeechBrain users get it); --no-self-graphs (or "
        "--no-masknet-graphs): eager calls",
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="gradient checkpointing in the Mamba stacks (less memory)",
    )
    parser.add_argument(
        "--low-memory",
        choices=sorted(LOW_MEMORY),
        default="auto",
        help="the BiMamba layers' low_memory option: true or auto (their "
        "default) recompute the activations before the scan in backward, "
        "false keeps them (more memory, less host and GPU work)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
