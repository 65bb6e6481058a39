"""The kernel-category breakdown of the efficiency study: kernel names from
real profiles land in the right category, the free-mixer bound and the
markdown table follow from the rows, bad input is refused, and on a GPU
both ASR encoders are profiled with their own kernels where expected."""

import pytest
import torch

from speechbrain_mamba.benchmarks import kernel_breakdown as kb

# Kernel names as PyTorch's profiler reported them on the H200.
KERNELS = {
    "_sequential_backward_kernel": "scan",
    "_sequential_kernel": "scan",
    "_adjoint_summary_kernel": "scan",
    "_carry_kernel": "scan",
    "_gate_kernel": "scan",
    "void selective_scan_bwd_kernel<Selective_Scan_bwd_kernel_traits<32>>": (
        "scan"
    ),
    "_step_state_kernel": "scan",
    "_conv_grad_pre_kernel": "mamba_conv",
    "_conv_forward_kernel": "mamba_conv",
    "void causal_conv1d_fwd_kernel<Causal_conv1d_fwd_kernel_traits<128>>": (
        "mamba_conv"
    ),
    "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26": (
        "attention"
    ),
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>": (
        "attention"
    ),
    "void at::native::(anonymous namespace)::"
    "conv_depthwise2d_grad_weight_kernel<c10::BFloat16>": "convolution",
    "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT": "gemm",
    "void at::native::(anonymous namespace)::"
    "GammaBetaBackwardCUDAKernelTemplate<float, float>": "normalization",
    "void at::native::(anonymous namespace)::"
    "vectorized_layer_norm_kernel<float, float, false>": "normalization",
    "void at::native::reduce_kernel<128, 4, at::native::ReduceOp>": (
        "reduction"
    ),
    "void at::native::vectorized_elementwise_kernel<8, "
    "at::native::bfloat16_copy_kernel_cuda>": "elementwise",
}


@pytest.mark.parametrize("kernel, category", sorted(KERNELS.items()))
def test_categories_of_profiled_kernels(kernel, category):
    assert kb.categorize(kernel) == category


def test_free_mixer_ratio_removes_only_the_mamba_kernels():
    mamba = {"total": 55.3, "scan": 20.6, "mamba_conv": 3.0, "gemm": 7.5}
    peer = {"total": 33.0, "attention": 2.0, "gemm": 5.7}
    expected = 33.0 / (55.3 - 23.6)
    assert kb.free_mixer_ratio(mamba, peer) == pytest.approx(expected)
    # a peer's attention is not removed: the bound is against the measured peer
    assert kb.free_mixer_ratio(mamba, {"total": 66.0}) == pytest.approx(
        2 * expected
    )


def test_markdown_table_rows_totals_and_bound():
    result = {
        "task": "asr",
        "seconds": 320,
        "batch": 8,
        "mode": "train",
        "dtype": "bfloat16",
        "models": {
            "ConMambaEncoder": {"total": 400.0, "scan": 150.0, "gemm": 250.0},
            "ConformerEncoder": {
                "total": 300.0,
                "attention": 100.0,
                "gemm": 200.0,
            },
        },
        "free_mixer_ratio": 1.2,
    }
    text = kb.markdown(result)
    lines = text.splitlines()
    assert lines[0] == "### asr, 320 s x 8, train, bfloat16"
    assert "| GPU ms per step | ConMambaEncoder | ConformerEncoder |" in lines
    assert "| scan | 150.00 (38%) | - |" in lines
    assert "| attention | - | 100.00 (33%) |" in lines
    assert "| gemm | 250.00 (62%) | 200.00 (67%) |" in lines
    assert "| **total** | 400.00 | 300.00 |" in lines
    assert "| without its own mixer kernels | 250.00 | 200.00 |" in lines
    assert "Measured ratio (ConformerEncoder / ConMambaEncoder): 0.75" in text
    assert "with scan and Mamba convolution free: 1.20." in text


def test_top_kernels_and_categories_add_up():
    kernels = {
        "_carry_kernel_fwd": {"ms": 3.0, "launches": 24},
        "nvjet_gemm_a": {"ms": 2.0, "launches": 48},
        "vectorized_elementwise_kernel": {"ms": 0.5, "launches": 300},
        "flash_fwd": {"ms": 1.0, "launches": 12},
    }
    assert kb.by_category(kernels) == {
        "scan": 3.0,
        "gemm": 2.0,
        "elementwise": 0.5,
        "attention": 1.0,
        "total": 6.5,
    }
    top = kb.top_kernels(kernels, 2)
    assert [(r["kernel"], r["category"], r["launches"]) for r in top] == [
        ("_carry_kernel_fwd", "scan", 24),
        ("nvjet_gemm_a", "gemm", 48),
    ]
    result = {
        "task": "tts", "seconds": 10, "batch": 1, "mode": "train",
        "dtype": "bfloat16", "free_mixer_ratio": 1.0,
        "models": {"VALL-M": kb.by_category(kernels),
                   "VALL-E": {"total": 1.0, "gemm": 1.0}},
        "top_kernels": {"VALL-M": top},
    }  # fmt: skip
    lines = kb.markdown(result).splitlines()
    assert "VALL-M's longest kernels:" in lines
    assert "| `_carry_kernel_fwd` | scan | 3.00 | 24 |" in lines


def test_bad_task_is_named():
    with pytest.raises(ValueError, match="task must be"):
        kb.breakdown("enhancement", 1, 1)


def test_cli_without_gpu_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs an NVIDIA GPU"):
        kb.main(["--task", "asr", "--seconds", "1"])


@pytest.mark.gpu
def test_asr_encoders_on_gpu(tmp_path):
    kb.main(
        [
            "--task", "asr", "--seconds", "2", "--batch", "2",
            "--repeats", "1", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    import json

    (result,) = json.loads((tmp_path / "kernel_breakdown.json").read_text())
    mamba, peer = result["models"].values()
    assert mamba.get("scan", 0) > 0 and "attention" not in mamba
    assert peer.get("attention", 0) > 0 and "scan" not in peer
    for row in (mamba, peer):
        parts = sum(v for k, v in row.items() if k != "total")
        assert parts == pytest.approx(row["total"])
    assert result["free_mixer_ratio"] == pytest.approx(
        peer["total"] / (mamba["total"] - kb.own_share(mamba))
    )
    assert (tmp_path / "kernel_breakdown.md").read_text().startswith("### asr")
    for name, row in result["models"].items():
        top = result["top_kernels"][name]
        assert top and top[0]["ms"] <= row["total"] + 1e-9
        assert [r["ms"] for r in top] == sorted(
            (r["ms"] for r in top), reverse=True
        )
