"""This package's Triton kernels (NVIDIA GPUs; on CPU under Triton's
interpreter, ``TRITON_INTERPRET=1``, which is how the tests run them in CI).

:mod:`~speechbrain_mamba.ops.triton.bidirectional_scan`
    both directions of a BiMamba layer in one scan (training and inference),
    or the forward direction alone (a unidirectional Mamba layer).
:mod:`~speechbrain_mamba.ops.triton.bidirectional_conv`
    the causal and anti-causal depthwise convolutions in one kernel (or the
    causal one alone).
:mod:`~speechbrain_mamba.ops.triton.bimamba_layer`
    a whole BiMamba or Mamba layer as one low-memory autograd function.
:mod:`~speechbrain_mamba.ops.triton.mamba_step`
    one decoding step of a unidirectional Mamba block in two kernels.
:mod:`~speechbrain_mamba.ops.triton.add_norm`
    the residual add and the pre-norm of a Mamba block in one kernel
    (forward and backward), keeping only the new residual stream.

Which call runs on them is decided in :mod:`speechbrain_mamba.ops.backend`.
"""
