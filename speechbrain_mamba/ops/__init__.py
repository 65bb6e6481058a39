"""Kernels and their dispatch: the plain selective-scan reference, a blocked
pure-PyTorch scan, optional numba CPU kernels, this package's Triton kernels
(:mod:`speechbrain_mamba.ops.triton`) and the optional mamba_ssm CUDA
kernels; :mod:`speechbrain_mamba.ops.backend` decides which one a layer
call runs on."""

from speechbrain_mamba.ops.selective_scan import (
    selective_scan_reference,
    selective_scan_torch,
)

__all__ = ["selective_scan_reference", "selective_scan_torch"]
