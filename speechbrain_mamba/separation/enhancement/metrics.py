"""Speech-enhancement metrics of one utterance: SI-SNR and its improvement
over the noisy input, SDR (BSS-eval, ``fast_bss_eval``) and its
improvement, PESQ (wideband at 16 kHz, narrowband at 8 kHz) and STOI of the
enhanced signal and of the noisy input.

PESQ and STOI come from :mod:`speechbrain_mamba.separation.metrics` (NaN
with a warning when a signal is too short or silent).

Author
------
speechbrain-mamba developers
"""

import math
import warnings

import numpy as np
import torch

from speechbrain_mamba.separation.metrics import pesq_score, stoi_score

#: Columns of the test results, in order.
ENHANCEMENT_METRICS = (
    "si-snr",
    "si-snr_i",
    "sdr",
    "sdr_i",
    "pesq",
    "pesq_noisy",
    "stoi",
    "stoi_noisy",
)


def si_snr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Scale-invariant SNR in dB (both signals made zero-mean).

    Arguments
    ---------
    estimate : torch.Tensor
        ``[T]``.
    reference : torch.Tensor
        ``[T]``.

    Returns
    -------
    float

    Example
    -------
    >>> ref = torch.randn(1000)
    >>> round(si_snr(3.0 * ref + 1.0, ref), 1) > 100
    True
    """
    est = estimate.double() - estimate.double().mean()
    ref = reference.double() - reference.double().mean()
    energy = (ref * ref).sum()
    if float(energy) == 0.0:
        return math.nan
    target = (est * ref).sum() / energy * ref
    noise = est - target
    ratio = (target * target).sum() / (noise * noise).sum().clamp_min(1e-20)
    return float(10.0 * torch.log10(ratio.clamp_min(1e-20)))


def sdr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """BSS-eval SDR in dB (512-tap distortion filter; at most 100 dB), NaN
    for a silent reference.

    Arguments
    ---------
    estimate : torch.Tensor
        ``[T]``.
    reference : torch.Tensor
        ``[T]``.

    Returns
    -------
    float

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> ref = torch.randn(4000, generator=g)
    >>> sdr(ref + 0.1 * torch.randn(4000, generator=g), ref) > 15
    True
    """
    import fast_bss_eval

    ref = reference.double().cpu().numpy()[None]
    est = estimate.double().cpu().numpy()[None]
    if not np.any(ref) or not np.all(np.isfinite(est)):
        warnings.warn(
            "SDR not computed (silent or non-finite); NaN", stacklevel=2
        )
        return math.nan
    with np.errstate(all="ignore"):
        return float(fast_bss_eval.sdr(ref, est, clamp_db=100.0)[0])


def enhancement_metrics(
    estimate: torch.Tensor,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    sample_rate: int,
    compute_pesq: bool = True,
    compute_stoi: bool = True,
) -> dict:
    """All test metrics of one utterance.

    Arguments
    ---------
    estimate : torch.Tensor
        ``[T]`` enhanced signal.
    clean : torch.Tensor
        ``[T]`` clean reference.
    noisy : torch.Tensor
        ``[T]`` noisy input.
    sample_rate : int
        Sample rate (PESQ mode).
    compute_pesq, compute_stoi : bool
        Set to False to skip the slower perceptual metrics (NaN).

    Returns
    -------
    dict
        Keys :data:`ENHANCEMENT_METRICS`.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> clean = torch.randn(8000, generator=g)
    >>> noisy = clean + torch.randn(8000, generator=g)
    >>> m = enhancement_metrics(clean, clean, noisy, 8000, False, False)
    >>> m["si-snr_i"] > 50, math.isnan(m["pesq"])
    (True, True)
    """
    estimate, clean, noisy = (
        t.detach().float().cpu().reshape(-1) for t in (estimate, clean, noisy)
    )
    if not estimate.shape == clean.shape == noisy.shape:
        raise ValueError(
            "estimate, clean and noisy must have the same length, got "
            f"{estimate.shape[0]}, {clean.shape[0]} and {noisy.shape[0]}"
        )
    out = {
        "si-snr": si_snr(estimate, clean),
        "sdr": sdr(estimate, clean),
    }
    out["si-snr_i"] = out["si-snr"] - si_snr(noisy, clean)
    out["sdr_i"] = out["sdr"] - sdr(noisy, clean)
    ref = clean.numpy()
    for name, enabled, fn in (
        ("pesq", compute_pesq, pesq_score),
        ("stoi", compute_stoi, stoi_score),
    ):
        if enabled:
            out[name] = fn(ref, estimate.numpy(), sample_rate)
            out[f"{name}_noisy"] = fn(ref, noisy.numpy(), sample_rate)
        else:
            out[name] = out[f"{name}_noisy"] = math.nan
    return {key: out[key] for key in ENHANCEMENT_METRICS}
