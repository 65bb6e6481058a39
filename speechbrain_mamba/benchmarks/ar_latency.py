"""Per-token latency of AR generation as the output grows: VALL-M (Mamba,
recurrent state: O(1) per token) against VALL-E (Transformer, key/value
cache: O(length) per token).

Both AR models read the same phonemes and prompt, then generate ``--tokens``
tokens one at a time through their cache (EOS disabled, so the length is
fixed). Each step is timed (CUDA synchronised) and the median latency is
reported per window of output positions::

    python -m speechbrain_mamba.benchmarks.ar_latency --size small \\
        --device cuda:0 --tokens 3000 --out results/ar_latency.json
    python -m speechbrain_mamba.benchmarks.ar_latency --device cpu \\
        --size tiny --tokens 500
    python -m speechbrain_mamba.benchmarks.ar_latency --size paper \\
        --device cuda:0 --dtype bf16 --tokens 4500 --cuda-graph

Outputs a JSON file and a Markdown table (ms per token at each window, and
the ratio of the last window to the first). The numbers are whatever the
run measures.

Author
------
speechbrain-mamba developers
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

import speechbrain_mamba  # noqa: F401
from speechbrain_mamba.benchmarks.timing import synchronize
from speechbrain_mamba.lobes.tts.ar import ARDecodingState
from speechbrain_mamba.lobes.tts.factory import build_codec_lm
from speechbrain_mamba.lobes.tts.step_graphs import step_graphs_switched
from speechbrain_mamba.utils.parameters import count_parameters

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_prompt(
    ar: torch.nn.Module,
    num_phonemes: int,
    prompt_frames: int,
    device: str = "cpu",
    seed: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random phoneme ids and first-codebook prompt tokens (one item).

    Arguments
    ---------
    ar : CodecAR
        The AR model (its symbol table and codebook size are used).
    num_phonemes : int
        Phonemes of the input.
    prompt_frames : int
        Frames of the prompt.
    device : str
        Where the tensors go.
    seed : int
        Seed of the CPU generator drawing them.

    Returns
    -------
    phonemes : torch.Tensor
        [1, num_phonemes] long, in 1 .. num_symbols - 1.
    prompt : torch.Tensor
        [1, prompt_frames] long, in 0 .. codebook_size - 1.

    Example
    -------
    >>> ar, _ = build_codec_lm("vallm", "tiny", num_symbols=20,
    ...                        codebook_size=16, num_codebooks=2, d_state=8)
    >>> phonemes, prompt = random_prompt(ar, 4, 6)
    >>> phonemes.shape, prompt.shape
    (torch.Size([1, 4]), torch.Size([1, 6]))
    """
    g = torch.Generator().manual_seed(seed)
    phonemes = torch.randint(1, ar.num_symbols, (1, num_phonemes), generator=g)
    prompt = torch.randint(0, ar.codebook_size, (1, prompt_frames), generator=g)
    return phonemes.to(device), prompt.to(device)


def prefill(
    ar: torch.nn.Module, phonemes: torch.Tensor, prompt: torch.Tensor
) -> Tuple[torch.Tensor, ARDecodingState]:
    """Reads every phoneme and prompt token into the cache (one forward
    pass through :meth:`CodecAR.start`, no padding).

    Arguments
    ---------
    ar : CodecAR
        The AR model.
    phonemes : torch.Tensor
        [batch, phonemes] long.
    prompt : torch.Tensor
        [batch, frames] first-codebook tokens.

    Returns
    -------
    logits : torch.Tensor
        [batch, codebook_size + 1]: the first new token's.
    state : ARDecodingState
        The filled cache, for :meth:`CodecAR.step`.

    Example
    -------
    >>> ar, _ = build_codec_lm("valle", "tiny", num_symbols=20,
    ...                        codebook_size=16, num_codebooks=2)
    >>> logits, state = prefill(ar.eval(), *random_prompt(ar, 4, 6))
    >>> logits.shape, len(state.cache)
    (torch.Size([1, 17]), 11)
    """
    batch, device = phonemes.shape[0], phonemes.device
    return ar.start(
        phonemes,
        torch.full((batch,), phonemes.shape[1], device=device),
        prompt,
        torch.full((batch,), prompt.shape[1], device=device),
    )


def greedy_token(ar: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """The most likely audio token, EOS excluded (so that generation runs
    for a fixed number of tokens); masks EOS in ``logits`` in place.

    Arguments
    ---------
    ar : CodecAR
        The AR model (for its EOS index).
    logits : torch.Tensor
        [batch, codebook_size + 1].

    Returns
    -------
    torch.Tensor
        [batch] long.

    Example
    -------
    >>> ar, _ = build_codec_lm("vallm", "tiny", num_symbols=20,
    ...                        codebook_size=4, num_codebooks=2, d_state=8)
    >>> greedy_token(ar, torch.tensor([[0.0, 2.0, 1.0, 0.0, 9.0]]))
    tensor([1])
    """
    logits[:, ar.eos_index] = float("-inf")
    return logits.argmax(-1)


@torch.no_grad()
def step_latencies(
    ar: torch.nn.Module,
    num_tokens: int,
    num_phonemes: int = 100,
    prompt_frames: int = 225,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    cuda_graph: bool = False,
) -> List[float]:
    """Seconds of each generation step (one token through the cache).

    Arguments
    ---------
    ar : CodecAR
        The AR model (eval mode, on ``device``).
    num_tokens : int
        Tokens to generate.
    num_phonemes : int
        Phonemes of the input (prompt transcript + text).
    prompt_frames : int
        Frames of the prompt (225 = 3 s at 75 Hz).
    device : str
        Device of the model.
    dtype : torch.dtype
        Autocast dtype on CUDA (fp32: no autocast).
    seed : int
        Seed of the random inputs.
    cuda_graph : bool
        Replay the steps from the CUDA graph the model records itself where
        it allows it (:mod:`speechbrain_mamba.lobes.tts.step_graphs`;
        recorded at the first step, i.e. in the warm-up run of
        :func:`run`); False: plain steps.

    Returns
    -------
    list of float
        ``num_tokens`` step times in seconds.

    Example
    -------
    >>> ar, _ = build_codec_lm("vallm", "tiny", num_symbols=20,
    ...                        codebook_size=16, num_codebooks=2, d_state=8)
    >>> len(step_latencies(ar.eval(), 3, num_phonemes=4, prompt_frames=2))
    3
    """
    phonemes, prompt = random_prompt(
        ar, num_phonemes, prompt_frames, device, seed
    )
    use_autocast = (
        torch.device(device).type == "cuda" and dtype != torch.float32
    )
    times = []
    autocast = torch.autocast("cuda", dtype=dtype, enabled=use_autocast)
    with autocast, step_graphs_switched(ar, cuda_graph):
        logits, state = prefill(ar, phonemes, prompt)
        for _ in range(num_tokens):
            token = greedy_token(ar, logits)
            synchronize(device)
            start = time.perf_counter()
            logits = ar.step(token, state)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return times


def windows(times: List[float], width: int) -> List[Dict[str, float]]:
    """Median milliseconds per token over consecutive windows.

    Arguments
    ---------
    times : list of float
        Step times in seconds.
    width : int
        Window size in tokens.

    Returns
    -------
    list of dict
        ``start``, ``end`` (output positions) and ``ms`` (median).

    Example
    -------
    >>> windows([0.001, 0.003, 0.002, 0.004], 2)[1]["ms"]
    3.0
    """
    out = []
    for start in range(0, len(times), width):
        chunk = times[start : start + width]
        out.append(
            {
                "start": start,
                "end": start + len(chunk),
                "ms": 1000 * statistics.median(chunk),
            }
        )
    return out


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Measures both models; returns the results."""
    results: Dict[str, object] = {
        "device": args.device,
        "size": args.size,
        "dtype": args.dtype,
        "tokens": args.tokens,
        "prompt_frames": args.prompt_frames,
        "num_phonemes": args.phonemes,
        "backend": os.environ.get("SBMAMBA_BACKEND", "auto"),
        "cuda_graph_requested": args.cuda_graph,
        "threads": torch.get_num_threads(),
        "models": {},
    }
    if torch.device(args.device).type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    for kind in args.models:
        torch.manual_seed(args.seed)
        ar, _ = build_codec_lm(kind, args.size, num_symbols=128)
        ar = ar.to(args.device).eval()
        # warm-up run (kernels, allocator), then the measured run
        step_latencies(
            ar,
            min(20, args.tokens),
            args.phonemes,
            args.prompt_frames,
            args.device,
            DTYPES[args.dtype],
            cuda_graph=args.cuda_graph,
        )
        times = step_latencies(
            ar,
            args.tokens,
            args.phonemes,
            args.prompt_frames,
            args.device,
            DTYPES[args.dtype],
            args.seed,
            args.cuda_graph,
        )
        table = windows(times, args.window)
        results["models"][kind] = {
            "parameters": count_parameters(ar),
            "windows": table,
            "first_ms": table[0]["ms"],
            "last_ms": table[-1]["ms"],
            "growth": table[-1]["ms"] / table[0]["ms"],
            "total_s": sum(times),
        }
        del ar
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
    return results


def markdown(results: Dict[str, object]) -> str:
    """Table of ms/token per window for every model."""
    models = results["models"]
    kinds = list(models)
    lines = [
        f"AR per-token latency ({results['size']}, {results['device']}, "
        f"{results['dtype']}; prompt {results['prompt_frames']} frames, "
        f"{results['num_phonemes']} phonemes)",
        "",
        "| output tokens | "
        + " | ".join(f"{k} ms/token" for k in kinds)
        + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for i, window in enumerate(models[kinds[0]]["windows"]):
        cells = [f"{models[k]['windows'][i]['ms']:.3f}" for k in kinds]
        lines.append(
            f"| {window['start']}-{window['end']} | " + " | ".join(cells) + " |"
        )
    lines.append(
        "| last / first | "
        + " | ".join(f"{models[k]['growth']:.2f}x" for k in kinds)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", default="small", choices=["tiny", "small", "medium", "paper"]
    )
    parser.add_argument("--models", nargs="+", default=["vallm", "valle"])
    parser.add_argument(
        "--device", default="cuda:0" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--window", type=int, default=250)
    parser.add_argument("--prompt_frames", type=int, default=225)
    parser.add_argument("--phonemes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="replay VALL-M's steps from the CUDA graph it records itself "
        "(default: plain steps; VALL-E: plain, its key/value cache grows)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (1 gives stable timings on a busy machine)",
    )
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args)
    text = markdown(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
