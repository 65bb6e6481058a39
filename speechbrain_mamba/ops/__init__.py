"""Selective-scan operators: a plain reference, a blocked pure-PyTorch scan,
an optional numba CPU kernel and the optional mamba_ssm CUDA kernels."""

from speechbrain_mamba.ops.selective_scan import (
    selective_scan,
    selective_scan_reference,
    selective_scan_torch,
)

__all__ = ["selective_scan", "selective_scan_reference", "selective_scan_torch"]
