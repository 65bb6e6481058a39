"""Beam-search cost of the Mamba decoder with and without its recurrent
cache, for long utterances.

SpeechBrain's ``S2STransformerBeamSearcher`` re-runs the decoder over the
whole prefix at every step; with a Mamba decoder this also re-scans the
encoder output inside every CrossMamba, so step ``t`` costs
O(encoder frames + t).
:class:`~speechbrain_mamba.lobes.asr.S2SMambaBeamSearcher` keeps each
hypothesis' recurrent state and costs O(1) per step. This script
times both on the paper's ConMamba + Mamba decoder ("small" or "large"),
with random weights, for utterances of 20 s and 60 s (4x subsampled 10 ms
frames: 25 encoder frames per second). Every search runs exactly the same
number of steps (eos is blocked until the last step; an assumed 4.5 tokens
per second of speech, ``--tokens_per_second``), so the two paths do the same
work apart from the cache::

    python -m speechbrain_mamba.benchmarks.asr_decode_cost --device cuda:0
    python -m speechbrain_mamba.benchmarks.asr_decode_cost --device cpu \\
        --seconds 20 --beam_size 4

Prints a table and writes ``--json`` if given. Timings are medians of
``--repeats`` runs, measured here; nothing is assumed.

Author
------
speechbrain-mamba developers
"""

import argparse
import json
import sys
from typing import Dict, List, Optional

import torch

from speechbrain_mamba.benchmarks.timing import measure
from speechbrain_mamba.utils.atomic import atomic_target

CONFIGS = {
    "small": dict(d_model=144, nhead=4, enc=12, dec=4, d_ffn=1024),
    "large": dict(d_model=512, nhead=8, enc=12, dec=6, d_ffn=2048),
}
FRAMES_PER_SECOND = 25  # 10 ms fbanks, 4x subsampling


def build(size: str, vocab: int, device: str):
    """Model (random weights), output layer and CTC layer."""
    from speechbrain.nnet.linear import Linear

    from speechbrain_mamba.lobes.asr import MambaTransformerASR

    cfg = CONFIGS[size]
    torch.manual_seed(0)
    model = MambaTransformerASR(
        tgt_vocab=vocab,
        input_size=640,
        d_model=cfg["d_model"],
        nhead=cfg["nhead"],
        num_encoder_layers=cfg["enc"],
        num_decoder_layers=cfg["dec"],
        d_ffn=cfg["d_ffn"],
        activation=torch.nn.GELU,
        encoder_module="conmamba",
        decoder_module="mamba",
        attention_type="RelPosMHAXL",
        normalize_before=True,
        causal=False,
        mamba_config={"d_state": 16, "expand": 2, "d_conv": 4},
    )
    seq_lin = Linear(input_size=cfg["d_model"], n_neurons=vocab)
    ctc_lin = Linear(input_size=cfg["d_model"], n_neurons=vocab)
    for module in (model, seq_lin, ctc_lin):
        module.to(device).eval()
    return model, seq_lin, ctc_lin


def make_searcher(
    model, seq_lin, ctc_lin, cached, steps, frames, ctc_weight, args
):
    """The cached searcher or SpeechBrain's own, for exactly ``steps``
    steps (min = max decode ratio), with joint CTC scoring when
    ``ctc_weight`` > 0."""
    from speechbrain.decoders import S2STransformerBeamSearcher
    from speechbrain.decoders.scorer import CTCScorer, ScorerBuilder

    from speechbrain_mamba.lobes.asr import S2SMambaBeamSearcher

    scorer = None
    if ctc_weight > 0:
        scorer = ScorerBuilder(
            full_scorers=[
                CTCScorer(ctc_fc=ctc_lin, blank_index=0, eos_index=2)
            ],
            weights={"ctc": ctc_weight},
        )
    ratio = (steps + 0.5) / frames
    cls = S2SMambaBeamSearcher if cached else S2STransformerBeamSearcher
    return cls(
        modules=[model, seq_lin],
        bos_index=1,
        eos_index=2,
        min_decode_ratio=ratio,
        max_decode_ratio=ratio,
        beam_size=args.beam_size,
        using_eos_threshold=False,
        length_normalization=True,
        scorer=scorer,
    )


def time_pair(
    model, seq_lin, ctc_lin, enc, seconds, steps, ctc_weight, args
) -> Dict[str, object]:
    """Times the cached and the full-prefix search on one encoder output."""
    frames = enc.shape[1]
    row = {
        "seconds": seconds,
        "encoder_frames": frames,
        "steps": steps,
        "ctc_weight": ctc_weight,
    }
    hyps: Dict[bool, list] = {}
    for cached in (True, False):
        search = make_searcher(
            model, seq_lin, ctc_lin, cached, steps, frames, ctc_weight, args
        )

        def step(s=search, key=cached, out=hyps):
            with torch.no_grad():
                out[key] = s(enc, torch.ones(1, device=enc.device))[0]

        result = measure(
            step,
            device=args.device,
            repeats=args.repeats,
            warmup=args.warmup,
            budget_s=args.budget_s,
        )
        key = "cached" if cached else "full_prefix"
        row[f"{key}_s"] = result["seconds"]
        row[f"{key}_runs"] = result["runs"]
    row["speedup"] = row["full_prefix_s"] / row["cached_s"]
    row["same_hypotheses"] = hyps[True] == hyps[False]
    print(
        f"{seconds:>5.0f} s | {frames} frames | {steps} steps | "
        f"ctc {ctc_weight} | cached {row['cached_s']:.3f} s | full prefix "
        f"{row['full_prefix_s']:.3f} s | x{row['speedup']:.1f} | "
        f"same hyps: {row['same_hypotheses']}",
        flush=True,
    )
    return row


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    """Times both searchers for every utterance length."""
    model, seq_lin, ctc_lin = build(args.size, args.vocab, args.device)
    rows = []
    for seconds in args.seconds:
        frames = int(seconds * FRAMES_PER_SECOND)
        steps = int(round(seconds * args.tokens_per_second))
        gen = torch.Generator().manual_seed(1)
        src = torch.randn(1, frames, 640, generator=gen).to(args.device)
        with torch.no_grad():
            enc = model.encode(src, torch.ones(1, device=args.device))
        for ctc_weight in args.ctc_weights:
            rows.append(
                time_pair(
                    model, seq_lin, ctc_lin, enc, seconds, steps, ctc_weight,
                    args,
                )
            )  # fmt: skip
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--seconds", type=float, nargs="+", default=[20, 60])
    parser.add_argument("--beam_size", type=int, default=10)
    parser.add_argument(
        "--ctc_weights",
        type=float,
        nargs="+",
        default=[0.0, 0.4],
        help="0: decoder only; > 0: joint CTC/attention (CTC prefix "
        "scoring over the whole vocabulary costs O(frames) per step in "
        "both searchers)",
    )
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--tokens_per_second", type=float, default=4.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget_s", type=float, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available; pass --device cpu")
    rows = run(args)
    if args.json:
        with atomic_target(args.json) as tmp:
            with open(tmp, "w", encoding="utf-8") as fout:
                record = {"config": vars(args), "results": rows}
                json.dump(record, fout, indent=2)


if __name__ == "__main__":
    main()
