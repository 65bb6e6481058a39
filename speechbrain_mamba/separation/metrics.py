"""Separation quality metrics of one utterance: SI-SNR and SI-SNRi
(SpeechBrain, permutation invariant), SDR and SDRi (BSS-eval, through the
maintained ``fast_bss_eval`` package), PESQ (narrowband at 8 kHz, wideband at
16 kHz) and STOI.

PESQ and STOI are computed on the estimates put in the order that maximises
SI-SNR, and averaged over the sources. When a signal is too short or has no
detectable speech for PESQ / STOI, the metric is NaN and a warning is
emitted (averages skip NaN values).

Author
------
speechbrain-mamba developers
"""

import logging
import math
import warnings

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Metric columns, in the order written to the results CSV.
METRICS = ("si-snr", "si-snr_i", "sdr", "sdr_i", "pesq", "stoi")


def _check(estimates: torch.Tensor, targets: torch.Tensor, mixture) -> None:
    if estimates.dim() != 2 or estimates.shape != targets.shape:
        raise ValueError(
            "estimates and targets must both be [T, num_spks], got "
            f"{tuple(estimates.shape)} and {tuple(targets.shape)}"
        )
    if mixture.dim() != 1 or mixture.shape[0] != targets.shape[0]:
        raise ValueError(
            f"mixture must be [T] with T={targets.shape[0]}, got "
            f"{tuple(mixture.shape)}"
        )


def pit_si_snr(
    estimates: torch.Tensor, targets: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """Permutation-invariant SI-SNR of one utterance.

    Arguments
    ---------
    estimates : torch.Tensor
        ``[T, num_spks]`` estimated sources.
    targets : torch.Tensor
        ``[T, num_spks]`` reference sources.

    Returns
    -------
    si_snr : float
        SI-SNR in dB, averaged over the sources, for the best permutation.
    ordered : torch.Tensor
        ``[T, num_spks]`` estimates in the order of ``targets``.

    Example
    -------
    >>> t = torch.randn(800, 2)
    >>> value, ordered = pit_si_snr(t[:, [1, 0]] * 3, t)
    >>> value > 100, torch.allclose(ordered, t * 3)
    (True, True)
    """
    from speechbrain.nnet.losses import PitWrapper, cal_si_snr

    pit = PitWrapper(cal_si_snr)
    loss, perms = pit(targets[None].float(), estimates[None].float())
    ordered = pit.reorder_tensor(estimates[None], perms)[0]
    return -float(loss[0]), ordered


def _bss_sdr(targets: torch.Tensor, estimates: torch.Tensor) -> float:
    """Mean BSS-eval SDR (512-tap distortion filter) over the sources.

    Several sources are matched by the permutation that maximises the SIR
    (as ``mir_eval``). A single source needs no permutation and has no
    interference: its SIR is infinite, which ``fast_bss_eval``'s
    permutation search cannot handle, so its SDR is computed directly
    (as the one pair of a pairwise computation: fast_bss_eval's
    non-pairwise path fails with NumPy 2).
    """
    import fast_bss_eval

    ref = targets.t().double().cpu().numpy()
    est = estimates.t().double().cpu().numpy()
    with np.errstate(all="ignore"):
        if ref.shape[0] == 1:
            neg_sdr = fast_bss_eval.sdr_loss(est, ref, pairwise=True)
            return -float(neg_sdr[0, 0])
        sdr, _, _, _ = fast_bss_eval.bss_eval_sources(
            ref, est, compute_permutation=True
        )
    return float(np.mean(sdr))


def _usable(reference: np.ndarray, estimate: np.ndarray, name: str) -> bool:
    """False (with a warning) for silent or non-finite signals."""
    for signal in (reference, estimate):
        if not np.all(np.isfinite(signal)) or not np.any(signal):
            warnings.warn(
                f"{name} not computed (silent or non-finite signal); NaN",
                stacklevel=3,
            )
            return False
    return True


def pesq_score(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int
) -> float:
    """PESQ of one source (narrowband at 8 kHz, wideband at 16 kHz).

    Arguments
    ---------
    reference, estimate : numpy.ndarray
        ``[T]`` signals.
    sample_rate : int
        8000 or 16000 (other rates give NaN with a warning).

    Returns
    -------
    float
        PESQ MOS-LQO, or NaN when PESQ cannot be computed.

    Example
    -------
    >>> x = np.random.RandomState(0).randn(100)
    >>> pesq_score(x, x, 8000)  # too short
    nan
    """
    from pesq import PesqError, pesq

    modes = {8000: "nb", 16000: "wb"}
    if sample_rate not in modes:
        warnings.warn(
            f"PESQ is undefined at {sample_rate} Hz; writing NaN", stacklevel=2
        )
        return math.nan
    if not _usable(reference, estimate, "PESQ"):
        return math.nan
    try:
        return float(
            pesq(
                sample_rate,
                np.asarray(reference, dtype=np.float64),
                np.asarray(estimate, dtype=np.float64),
                modes[sample_rate],
            )
        )
    except PesqError as err:
        warnings.warn(
            f"PESQ not computed ({type(err).__name__}); NaN", stacklevel=2
        )
        return math.nan


def stoi_score(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int
) -> float:
    """STOI of one source.

    Arguments
    ---------
    reference, estimate : numpy.ndarray
        ``[T]`` signals.
    sample_rate : int
        Sample rate in Hz.

    Returns
    -------
    float
        STOI in [0, 1], or NaN when the signal is too short.

    Example
    -------
    >>> x = np.random.RandomState(0).randn(16000)
    >>> round(stoi_score(x, x, 8000), 3)
    1.0
    """
    from pystoi import stoi

    if not _usable(reference, estimate, "STOI"):
        return math.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(
            stoi(
                np.asarray(reference, dtype=np.float64),
                np.asarray(estimate, dtype=np.float64),
                sample_rate,
                extended=False,
            )
        )
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        warnings.warn("STOI not computed (signal too short); NaN", stacklevel=2)
        return math.nan
    return value


def separation_metrics(
    estimates: torch.Tensor,
    targets: torch.Tensor,
    mixture: torch.Tensor,
    sample_rate: int,
    compute_pesq: bool = True,
    compute_stoi: bool = True,
) -> dict[str, float]:
    """All test-stage metrics of one utterance.

    Arguments
    ---------
    estimates : torch.Tensor
        ``[T, num_spks]`` estimated sources (any order); ``num_spks`` may
        be 1 (no permutation).
    targets : torch.Tensor
        ``[T, num_spks]`` reference sources.
    mixture : torch.Tensor
        ``[T]`` input mixture (baseline of the improvements).
    sample_rate : int
        Sample rate in Hz (selects PESQ nb / wb).
    compute_pesq, compute_stoi : bool
        Set to False to skip the (slower) perceptual metrics (NaN).

    Returns
    -------
    dict
        Keys :data:`METRICS` (dB for SI-SNR / SDR and their improvements).

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> s = torch.randn(8000, 2, generator=g)
    >>> m = separation_metrics(s[:, [1, 0]], s, s.sum(1), 8000, False, False)
    >>> m["si-snr"] > 60 and m["si-snr_i"] > 60 and m["sdr_i"] > 40
    True
    """
    estimates = estimates.detach().float().cpu()
    targets = targets.detach().float().cpu()
    mixture = mixture.detach().float().cpu()
    _check(estimates, targets, mixture)
    num_spks = targets.shape[1]
    baseline = mixture[:, None].expand(-1, num_spks)

    si_snr, ordered = pit_si_snr(estimates, targets)
    si_snr_mix, _ = pit_si_snr(baseline, targets)
    sdr = _bss_sdr(targets, estimates)
    sdr_mix = _bss_sdr(targets, baseline)

    pesq_values, stoi_values = [], []
    for k in range(num_spks):
        ref = targets[:, k].numpy()
        est = ordered[:, k].numpy()
        if compute_pesq:
            pesq_values.append(pesq_score(ref, est, sample_rate))
        if compute_stoi:
            stoi_values.append(stoi_score(ref, est, sample_rate))
    return {
        "si-snr": si_snr,
        "si-snr_i": si_snr - si_snr_mix,
        "sdr": sdr,
        "sdr_i": sdr - sdr_mix,
        "pesq": float(np.mean(pesq_values)) if pesq_values else math.nan,
        "stoi": float(np.mean(stoi_values)) if stoi_values else math.nan,
    }
