"""Shared helper of the GPU tests: activation memory kept for backward."""

import torch


def memory_kept_for_backward(layer, x, low_memory) -> int:
    """Bytes of CUDA memory that a bf16-autocast forward of ``layer`` (with
    ``layer.low_memory = low_memory``) keeps until its backward runs; the
    backward is run afterwards so that nothing stays behind."""
    layer.low_memory = low_memory
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    kept = torch.cuda.memory_allocated() - start
    out.float().sum().backward()
    return kept
