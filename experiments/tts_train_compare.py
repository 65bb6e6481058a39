"""VALL-M (Mamba) against VALL-E (Transformer), small size, trained on the
codec tokens of the espeak-ng mini LibriTTS corpus for the same wall-clock
budget; reports AR and NAR token accuracy and NLL on held-out utterances
(unseen speakers), next to chance and unigram baselines.

Two stages, so that the corpus can be made where espeak-ng is installed and
the training run where the GPU is::

    # 1. corpus, manifests (phonemes), codec, token extraction (CPU is fine)
    python experiments/tts_train_compare.py --stage prepare \\
        --out results/tts_compare --num_utterances 2000
    # 2. training and evaluation (reads OUT/prepared: manifests + tokens)
    python experiments/tts_train_compare.py --stage train \\
        --out results/tts_compare --budget_min 10 --device cuda:0

``--stage all`` does both. Without ``--codec`` (a local EncodecModel folder
or a hub id in the HuggingFace cache) the tokens come from a randomly
initialised codec of the EnCodec 24 kHz architecture whose codebooks are
initialised from encoder outputs of training audio (8 codebooks of 1024 at
75 Hz); its tokens are a deterministic function of the audio, so they can
be learned, though they are not EnCodec's. Each model trains AR and NAR
jointly (as the recipe's ``train_stage: both``) with the same batches,
optimiser and schedule; evaluation pauses the clock.

Outputs ``OUT/summary.json`` and ``OUT/summary.md``. The numbers are
whatever the run measures.

Author
------
speechbrain-mamba developers
"""

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

import speechbrain_mamba  # noqa: F401
from speechbrain_mamba.benchmarks.models import joint_loss
from speechbrain_mamba.benchmarks.timing import synchronize
from speechbrain_mamba.lobes.tts.factory import build_codec_lm
from speechbrain_mamba.utils.parameters import count_parameters

Item = Tuple[torch.Tensor, torch.Tensor]  # phoneme ids, codes [nq, frames]


# -- stage 1 -----------------------------------------------------------------
def prepare(args: argparse.Namespace) -> Path:
    """Corpus, manifests, codec and tokens under ``OUT/prepared``."""
    from speechbrain_mamba.data.mini_corpus import build_libritts
    from speechbrain_mamba.tts.audio import load_audio
    from speechbrain_mamba.tts.codec import EncodecCodec, build_random_codec
    from speechbrain_mamba.tts.libritts_prepare import prepare_libritts
    from speechbrain_mamba.tts.tokens import extract_codec_tokens

    out = Path(args.out)
    corpus = build_libritts(
        out / "LibriTTS", seed=args.seed, num_utterances=args.num_utterances
    )
    prepared = out / "prepared"
    files = prepare_libritts(corpus, prepared, text_backend="auto")
    codec_source = args.codec
    if codec_source is None:
        wavs = sorted((corpus / "train-clean-100").glob("*/*/*.wav"))
        random.Random(args.seed).shuffle(wavs)
        codec_source = build_random_codec(
            out / "random_encodec",
            seed=args.seed,
            num_filters=args.codec_filters,
            hidden_size=args.codec_hidden,
            num_lstm_layers=2,
            calibration=[load_audio(w, 24000) for w in wavs[:64]],
        )
    codec = EncodecCodec.from_pretrained(codec_source, bandwidth=6.0)
    device = args.device if torch.cuda.is_available() else "cpu"
    counts = extract_codec_tokens(
        [files["train"], files["valid"]], codec, prepared / "tokens", device
    )
    print(f"prepared {prepared}: {counts}, codec {codec.describe()}")
    return prepared


# -- stage 2 -----------------------------------------------------------------
def load_set(prepared: Path, tokens: Path, name: str) -> List[Item]:
    """Phoneme ids and codec tokens of a prepared set."""
    from speechbrain_mamba.tts.text import TextFrontEnd
    from speechbrain_mamba.tts.tokens import load_tokens

    front = TextFrontEnd.from_file(prepared / "text_frontend.json")
    manifest = json.loads((prepared / f"{name}.json").read_text())
    return [
        (
            front.encode_tokens(entry["phonemes"].split()),
            load_tokens(tokens, utt),
        )
        for utt, entry in sorted(manifest.items())
    ]


def make_batches(
    items: List[Item], max_frames: int, rng: Optional[random.Random] = None
) -> List[List[Item]]:
    """Length-sorted batches of at most ``max_frames`` padded audio frames
    (dynamic batching by duration), shuffled when ``rng`` is given."""
    order = sorted(items, key=lambda item: item[1].shape[1])
    batches, current = [], []
    for item in order:
        longest = max([item[1].shape[1]] + [i[1].shape[1] for i in current])
        if current and longest * (len(current) + 1) > max_frames:
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def collate(batch: List[Item], device) -> Dict[str, torch.Tensor]:
    """Pads a batch; lengths are relative as in SpeechBrain."""
    size = len(batch)
    text_len = max(p.shape[0] for p, _ in batch)
    frames = max(c.shape[1] for _, c in batch)
    num_codebooks = batch[0][1].shape[0]
    phonemes = torch.zeros(size, text_len, dtype=torch.long)
    codes = torch.zeros(size, num_codebooks, frames, dtype=torch.long)
    for b, (p, c) in enumerate(batch):
        phonemes[b, : p.shape[0]] = p
        codes[b, :, : c.shape[1]] = c
    text_frames = torch.tensor([p.shape[0] for p, _ in batch])
    code_frames = torch.tensor([c.shape[1] for _, c in batch])
    return {
        "phonemes": phonemes.to(device),
        "codes": codes.to(device),
        "phoneme_lens": (text_frames.float() / text_len).to(device),
        "code_lens": (code_frames.float() / frames).to(device),
        "code_frames": code_frames.to(device),
    }


@torch.no_grad()
def evaluate(ar, nar, batches, device, dtype) -> Dict[str, float]:
    """AR (codebook 1 + EOS) and NAR (codebooks 2..N of the target frames,
    every stage, prompt = first third) accuracy and NLL."""
    from speechbrain_mamba.tts.brain import nar_targets, sample_prompt_frames
    from speechbrain_mamba.tts.metrics import TokenStats

    ar.eval()
    nar.eval()
    stats = {"ar": TokenStats(), "nar": TokenStats()}
    cuda = torch.device(device).type == "cuda"
    with torch.autocast(
        "cuda", dtype=dtype, enabled=cuda and dtype != torch.float32
    ):
        for raw in batches:
            batch = collate(raw, device)
            codes = batch["codes"]
            logits = ar(
                batch["phonemes"],
                codes[:, 0],
                batch["phoneme_lens"],
                batch["code_lens"],
            )
            stats["ar"].append(
                logits, ar.targets(codes[:, 0], batch["code_lens"])
            )
            frames = batch["code_frames"]
            prompt = sample_prompt_frames(frames, 0.33, 0.33)
            for j in range(1, nar.num_codebooks):
                stage = torch.full_like(frames, j)
                logits = nar(
                    batch["phonemes"],
                    codes,
                    prompt,
                    stage,
                    batch["phoneme_lens"],
                    batch["code_lens"],
                )
                stats["nar"].append(
                    logits, nar_targets(codes, prompt, frames, stage)
                )
    ar.train()
    nar.train()
    out = {}
    for name, s in stats.items():
        summary = s.summarize()
        out[f"{name}_acc"] = summary["acc"]
        out[f"{name}_nll"] = summary["nll"]
    return out


def baselines(
    train: List[Item], valid: List[Item], codebook_size: int
) -> Dict[str, float]:
    """Chance and unigram (training token frequencies) accuracy / NLL on the
    validation tokens, AR and NAR."""
    eos = codebook_size
    num_codebooks = train[0][1].shape[0]

    def unigram(train_tokens, valid_tokens, vocab):
        counts = Counter(train_tokens)
        total = sum(counts.values()) + vocab  # add-one smoothing
        nll = -sum(
            math.log((counts[t] + 1) / total) for t in valid_tokens
        ) / len(valid_tokens)
        top = counts.most_common(1)[0][0]
        acc = sum(t == top for t in valid_tokens) / len(valid_tokens)
        return acc, nll

    ar_train = [t for _, c in train for t in c[0].tolist()] + [eos] * len(train)
    ar_valid = [t for _, c in valid for t in c[0].tolist()] + [eos] * len(valid)
    ar_acc, ar_nll = unigram(ar_train, ar_valid, codebook_size + 1)
    nar_acc = nar_nll = 0.0
    for k in range(1, num_codebooks):
        acc, nll = unigram(
            [t for _, c in train for t in c[k].tolist()],
            [t for _, c in valid for t in c[k].tolist()],
            codebook_size,
        )
        nar_acc += acc / (num_codebooks - 1)
        nar_nll += nll / (num_codebooks - 1)
    return {
        "chance_acc": 1.0 / codebook_size,
        "chance_nll": math.log(codebook_size),
        "unigram_ar_acc": ar_acc,
        "unigram_ar_nll": ar_nll,
        "unigram_nar_acc": nar_acc,
        "unigram_nar_nll": nar_nll,
    }


def train_model(
    kind: str,
    train: List[Item],
    valid_batches: List[List[Item]],
    num_symbols: int,
    codebook_size: int,
    args: argparse.Namespace,
) -> Dict[str, object]:
    """Trains one model for the budget; evaluates at ``eval_points``
    evenly spaced times (the clock is paused while evaluating)."""
    from speechbrain_mamba.ops.backend import effective_backend

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    ar, nar = build_codec_lm(
        kind,
        args.size,
        num_symbols=num_symbols,
        codebook_size=codebook_size,
        num_codebooks=train[0][1].shape[0],
        dropout=args.dropout,
    )
    ar, nar = ar.to(device).train(), nar.to(device).train()
    params = list(ar.parameters()) + list(nar.parameters())
    optimizer = torch.optim.AdamW(
        params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01
    )
    warmup = args.warmup

    def schedule(step):
        step = max(step, 1)
        return min(step / warmup, math.sqrt(warmup / step))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    budget = 60.0 * args.budget_min if args.budget_s is None else args.budget_s
    points = args.eval_points
    checkpoints = [budget * (i + 1) / points for i in range(points)]
    curve, elapsed, steps, frames_seen, epochs = [], 0.0, 0, 0, 0
    cuda = device.type == "cuda"
    while checkpoints:
        epochs += 1
        for raw in make_batches(train, args.batch_frames, rng):
            batch = collate(raw, device)
            synchronize(device)
            start = time.perf_counter()
            with torch.autocast(
                "cuda", dtype=dtype, enabled=cuda and dtype != torch.float32
            ):
                loss = joint_loss(ar, nar, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            synchronize(device)
            elapsed += time.perf_counter() - start
            steps += 1
            frames_seen += int(batch["code_frames"].sum())
            if elapsed >= checkpoints[0]:
                checkpoints.pop(0)
                point = evaluate(ar, nar, valid_batches, device, dtype)
                point.update(
                    train_s=round(elapsed, 1),
                    steps=steps,
                    loss=round(loss.item(), 4),
                )
                curve.append(point)
                print(kind, point, flush=True)
                if not checkpoints:
                    break
    return {
        "kind": kind,
        "size": args.size,
        "ar_parameters": count_parameters(ar),
        "nar_parameters": count_parameters(nar),
        "mamba_backend": effective_backend("auto") if kind == "vallm" else None,
        "steps": steps,
        "epochs": epochs,
        "train_s": round(elapsed, 1),
        "frames_per_s": round(frames_seen / max(elapsed, 1e-9), 1),
        "curve": curve,
        "final": curve[-1],
    }


def summary_markdown(results: Dict[str, object]) -> str:
    """Table of the final metrics and the baselines."""
    base = results["baselines"]
    lines = [
        f"VALL-M vs VALL-E ({results['size']}), {results['budget_s']:.0f} s "
        f"training each on {results['train_utterances']} utterances, "
        f"evaluated on {results['valid_utterances']} held-out utterances "
        f"({results['device']}, {results['precision']})",
        "",
        "| model | AR params | NAR params | steps | AR acc | AR NLL | "
        "NAR acc | NAR NLL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        f = run["final"]
        lines.append(
            f"| {run['kind']} | {run['ar_parameters'] / 1e6:.1f} M | "
            f"{run['nar_parameters'] / 1e6:.1f} M | {run['steps']} | "
            f"{f['ar_acc']:.3f} | {f['ar_nll']:.3f} | {f['nar_acc']:.3f} | "
            f"{f['nar_nll']:.3f} |"
        )
    lines.append(
        f"| unigram baseline | | | | {base['unigram_ar_acc']:.3f} | "
        f"{base['unigram_ar_nll']:.3f} | {base['unigram_nar_acc']:.3f} | "
        f"{base['unigram_nar_nll']:.3f} |"
    )
    lines.append(
        f"| chance | | | | {base['chance_acc']:.4f} | "
        f"{base['chance_nll']:.3f} | {base['chance_acc']:.4f} | "
        f"{base['chance_nll']:.3f} |"
    )
    return "\n".join(lines) + "\n"


def run_training(args: argparse.Namespace) -> Dict[str, object]:
    """Stage 2: trains every model and writes the summary."""
    from speechbrain_mamba.tts.text import TextFrontEnd

    out = Path(args.out)
    prepared = Path(args.prepared) if args.prepared else out / "prepared"
    tokens = Path(args.tokens) if args.tokens else prepared / "tokens"
    codec = json.loads((tokens / "codec.json").read_text())
    front = TextFrontEnd.from_file(prepared / "text_frontend.json")
    train = load_set(prepared, tokens, "train")
    valid = load_set(prepared, tokens, "valid")
    valid_batches = make_batches(valid, args.batch_frames)
    results: Dict[str, object] = {
        "size": args.size,
        "device": args.device,
        "precision": args.precision,
        "budget_s": 60.0 * args.budget_min
        if args.budget_s is None
        else args.budget_s,
        "codec": codec,
        "train_utterances": len(train),
        "valid_utterances": len(valid),
        "baselines": baselines(train, valid, codec["codebook_size"]),
        "runs": [],
    }
    if torch.device(args.device).type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    for kind in args.models:
        results["runs"].append(
            train_model(
                kind,
                train,
                valid_batches,
                max(len(front), 8),
                codec["codebook_size"],
                args,
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    text = summary_markdown(results)
    (out / "summary.md").write_text(text)
    print(text)
    return results


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stage", choices=["prepare", "train", "all"], default="all"
    )
    parser.add_argument("--out", default="results/tts_compare")
    parser.add_argument(
        "--prepared",
        default=None,
        help="prepared folder (default OUT/prepared)",
    )
    parser.add_argument(
        "--tokens", default=None, help="codec tokens (default PREPARED/tokens)"
    )
    parser.add_argument("--num_utterances", type=int, default=2000)
    parser.add_argument(
        "--codec",
        default=None,
        help="EncodecModel folder or hub id (default: random)",
    )
    parser.add_argument("--codec_filters", type=int, default=32)
    parser.add_argument("--codec_hidden", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=["vallm", "valle"])
    parser.add_argument(
        "--size", default="small", choices=["tiny", "small", "medium", "paper"]
    )
    parser.add_argument("--budget_min", type=float, default=10.0)
    parser.add_argument(
        "--budget_s", type=float, default=None, help="overrides --budget_min"
    )
    parser.add_argument("--eval_points", type=int, default=4)
    parser.add_argument("--batch_frames", type=int, default=75 * 120)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument(
        "--device", default="cuda:0" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.stage in ("prepare", "all"):
        prepare(args)
    if args.stage in ("train", "all"):
        run_training(args)


if __name__ == "__main__":
    main()
