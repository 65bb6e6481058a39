"""The LibriTTS zero-shot TTS recipe driver (VALL-E and VALL-M): data
preparation, codec token extraction, AR / NAR training, validation and the
test stage (teacher-forced token metrics, then synthesis of held-out
sentences with a prompt from another utterance of the same speaker, with
WER and speaker similarity when the user gives an ASR and a speaker
model)::

    python train.py hparams/vallm.yaml --data_folder /data/LibriTTS
    torchrun --nproc_per_node=4 train.py hparams/valle.yaml --data_folder ...

Rerunning the same command resumes from the last checkpoint.

Author
------
speechbrain-mamba developers
"""

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main

from speechbrain_mamba.tts.audio import load_audio, write_audio
from speechbrain_mamba.tts.brain import CodecLMBrain, dataio_prepare
from speechbrain_mamba.tts.codec import EncodecCodec
from speechbrain_mamba.tts.evaluation import (
    SynthesisEvaluator,
    speechbrain_embedder,
    speechbrain_transcriber,
)
from speechbrain_mamba.tts.generation import SamplingConfig
from speechbrain_mamba.tts.libritts_prepare import (
    LIBRITTS_SAMPLE_RATE,
    prepare_libritts,
)
from speechbrain_mamba.tts.synthesis import ZeroShotSynthesizer
from speechbrain_mamba.tts.text import TextFrontEnd
from speechbrain_mamba.tts.tokens import extract_codec_tokens, load_tokens
from speechbrain_mamba.utils.atomic import atomic_write_csv, atomic_write_text

logger = logging.getLogger(__name__)


def load_codec(hparams: Dict[str, Any]) -> EncodecCodec:
    """The recipe's codec, checked against the model sizes.

    Arguments
    ---------
    hparams : dict
        Needs ``codec_source``, ``codec_bandwidth``, ``num_codebooks`` and
        ``codebook_size``.

    Returns
    -------
    EncodecCodec
    """
    codec = EncodecCodec.from_pretrained(
        hparams["codec_source"], bandwidth=hparams["codec_bandwidth"]
    )
    for key in ("num_codebooks", "codebook_size"):
        if getattr(codec, key) != hparams[key]:
            raise ValueError(
                f"the codec {hparams['codec_source']} has {key}="
                f"{getattr(codec, key)} at {hparams['codec_bandwidth']} kbps "
                f"but the hparams say {key}={hparams[key]}"
            )
    return codec


def _extract(hparams: Dict[str, Any], device: str) -> None:
    codec = load_codec(hparams)
    counts = extract_codec_tokens(
        [hparams[f"{name}_json"] for name in ("train", "valid", "test")],
        codec,
        hparams["tokens_folder"],
        device=device,
    )
    logger.info("codec tokens: %s", counts)


def choose_prompts(
    entries: Dict[str, Dict[str, Any]], prompt_seconds: float = 3.0
) -> Dict[str, Tuple[str, bool]]:
    """Picks, for each utterance, a prompt among the other utterances of the
    same speaker: the one whose duration is closest to ``prompt_seconds``.

    Arguments
    ---------
    entries : dict
        Manifest (id -> entry with ``spk_id`` and ``duration``).
    prompt_seconds : float
        Preferred prompt duration.

    Returns
    -------
    dict
        id -> (prompt id, whether it is another utterance). A speaker with
        a single utterance gets its own utterance as the prompt (False).

    Example
    -------
    >>> entries = {"a": {"spk_id": "1", "duration": 2.0},
    ...            "b": {"spk_id": "1", "duration": 3.5},
    ...            "c": {"spk_id": "1", "duration": 9.0},
    ...            "d": {"spk_id": "2", "duration": 4.0}}
    >>> choose_prompts(entries)
    {'a': ('b', True), 'b': ('a', True), 'c': ('b', True), 'd': ('d', False)}
    """
    by_speaker: Dict[str, List[str]] = {}
    for utt in sorted(entries):
        by_speaker.setdefault(entries[utt]["spk_id"], []).append(utt)
    out = {}
    for utt in sorted(entries):
        others = [o for o in by_speaker[entries[utt]["spk_id"]] if o != utt]
        if not others:
            out[utt] = (utt, False)
            continue
        best = min(
            others,
            key=lambda o: (abs(entries[o]["duration"] - prompt_seconds), o),
        )
        out[utt] = (best, True)
    return out


def synthesize_test_set(
    synthesizer: ZeroShotSynthesizer,
    manifest: Dict[str, Dict[str, Any]],
    tokens_folder: str,
    out_folder: Path,
    prompt_seconds: float = 3.0,
    max_utterances: Optional[int] = None,
    evaluator: Optional[SynthesisEvaluator] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Synthesises held-out sentences, each with a prompt from another
    utterance of the same speaker, and writes the wavs and a CSV.

    Arguments
    ---------
    synthesizer : ZeroShotSynthesizer
        Models, codec and front end.
    manifest : dict
        Test manifest (with ``phonemes``, ``text``, ``wav``, ``spk_id``,
        ``duration``).
    tokens_folder : str
        Extracted codec tokens (for the prompts).
    out_folder : Path
        Where ``<id>.wav`` and ``synthesis.csv`` go.
    prompt_seconds : float
        Preferred prompt duration.
    max_utterances : int, optional
        Synthesise only the first ones (sorted ids).
    evaluator : SynthesisEvaluator, optional
        Computes WER / speaker similarity.
    seed : int
        Seed of the sampling.

    Returns
    -------
    dict
        Summary (utterances, ended, and the evaluator's metrics).
    """
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    prompts = choose_prompts(manifest, prompt_seconds)
    utts = sorted(manifest)[:max_utterances]
    device = synthesizer.device
    generator = torch.Generator(device=device).manual_seed(seed)
    rate = synthesizer.codec.sample_rate
    rows, ended = [], 0
    for utt in utts:
        entry = manifest[utt]
        prompt_id, other = prompts[utt]
        if not other:
            logger.warning(
                "speaker %s has no other test utterance: %s is its own prompt",
                entry["spk_id"],
                utt,
            )
        prompt = manifest[prompt_id]
        wav, info = synthesizer.synthesize_from_tokens(
            entry["phonemes"].split(),
            load_tokens(tokens_folder, prompt_id),
            prompt["phonemes"].split(),
            generator=generator,
        )
        ended += int(info["ended"])
        path = out_folder / f"{utt}.wav"
        write_audio(path, wav, rate)
        rows.append(
            {
                "id": utt,
                "prompt_id": prompt_id,
                "prompt_is_other_utterance": other,
                "frames": info["frames"],
                "ended_with_eos": info["ended"],
                "seconds": round(wav.shape[0] / rate, 3),
                "wav": str(path),
                "text": entry["text"],
            }
        )
        if evaluator is not None and evaluator.enabled and wav.numel():
            evaluator.add(
                utt,
                wav,
                rate,
                entry["text"],
                prompt=load_audio(prompt["wav"], rate),
                reference=load_audio(entry["wav"], rate),
            )
    table = out_folder / "synthesis.csv"
    atomic_write_csv(table, list(rows[0]), rows)
    summary: Dict[str, Any] = {"utterances": len(rows), "ended": ended}
    if evaluator is not None and evaluator.enabled:
        summary.update(evaluator.summarize())
        evaluator.write(out_folder / "metrics_per_utterance.csv")
    return summary


def _evaluator(hparams: Dict[str, Any], device: str) -> SynthesisEvaluator:
    savedir = Path(hparams["output_folder"]) / "eval_models"
    transcribe = embed = None
    if hparams.get("eval_asr_source"):
        transcribe = speechbrain_transcriber(
            hparams["eval_asr_source"],
            hparams["eval_asr_interface"],
            savedir / "asr",
            device,
        )
    if hparams.get("eval_spk_source"):
        embed = speechbrain_embedder(
            hparams["eval_spk_source"],
            hparams["eval_spk_interface"],
            savedir / "spk",
            device,
        )
    return SynthesisEvaluator(transcribe, embed)


def sampling_config(hparams: Dict[str, Any]) -> SamplingConfig:
    """Sampling settings from the hparams (defaults where absent).

    Arguments
    ---------
    hparams : dict

    Returns
    -------
    SamplingConfig

    Example
    -------
    >>> sampling_config({"top_k": 5}).top_k
    5
    """
    defaults = SamplingConfig()
    return SamplingConfig(
        **{
            key: hparams.get(key, getattr(defaults, key))
            for key in defaults.__dataclass_fields__
        }
    )


def run_recipe(argv: Sequence[str]) -> Dict[str, Any]:
    """Runs the recipe end to end.

    Arguments
    ---------
    argv : sequence of str
        SpeechBrain command line: hparams file, ``--key value`` overrides
        and run options (``--device``, ``--precision``...).

    Returns
    -------
    dict
        ``test_stats`` (token metrics) and ``synthesis`` (summary), when the
        test stage ran.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(list(argv))
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    run_on_main(
        prepare_libritts,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "train_splits": hparams["train_splits"],
            "valid_splits": hparams["valid_splits"],
            "test_splits": hparams["test_splits"],
            "text_backend": hparams["text_backend"],
            "language": hparams["language"],
            "min_duration": hparams["min_duration"],
            "max_duration": hparams["max_duration"],
            "skip_prep": hparams["skip_prep"],
            "sample_rate": hparams.get("sample_rate", LIBRITTS_SAMPLE_RATE),
        },
    )
    frontend = TextFrontEnd.from_file(hparams["frontend_file"])
    if len(frontend) > hparams["num_symbols"]:
        raise ValueError(
            f"the symbol table has {len(frontend)} symbols but num_symbols="
            f"{hparams['num_symbols']}: raise num_symbols"
        )
    brain = CodecLMBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    run_on_main(_extract, args=[hparams, str(brain.device)])
    datasets, train_sampler, valid_sampler = dataio_prepare(hparams, frontend)
    train_opts = dict(hparams["train_dataloader_opts"])
    valid_opts = dict(hparams["valid_dataloader_opts"])
    if train_sampler is not None:
        train_opts = {
            "batch_sampler": train_sampler,
            "num_workers": hparams["num_workers"],
        }
        valid_opts = {"batch_sampler": valid_sampler}
    if not hparams.get("skip_train", False):
        brain.fit(
            hparams["epoch_counter"],
            datasets["train"],
            datasets["valid"],
            train_loader_kwargs=train_opts,
            valid_loader_kwargs=valid_opts,
        )
    result: Dict[str, Any] = {}
    if hparams.get("skip_test", False):
        return result
    brain.evaluate(
        datasets["test"],
        min_key="loss",
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )
    result["test_stats"] = brain.last_stats
    if if_main_process() and hparams.get("test_synthesis", True):
        result["synthesis"] = _synthesize(hparams, brain, frontend)
    return result


def _synthesize(hparams, brain, frontend) -> Dict[str, Any]:
    codec = load_codec(hparams).to(brain.device)
    synthesizer = ZeroShotSynthesizer(
        hparams["ar"].eval(),
        hparams["nar"].eval(),
        codec,
        frontend,
        sampling_config(hparams),
    )
    with open(hparams["test_json"], encoding="utf-8") as fin:
        manifest = json.load(fin)
    summary = synthesize_test_set(
        synthesizer,
        manifest,
        hparams["tokens_folder"],
        Path(hparams["output_folder"]) / "synthesis",
        hparams["prompt_seconds"],
        hparams["test_max_utterances"],
        _evaluator(hparams, str(brain.device)),
        hparams["seed"],
    )
    logger.info("test synthesis: %s", summary)
    path = Path(hparams["output_folder"]) / "synthesis_summary.json"
    atomic_write_text(path, json.dumps(summary, indent=1))
    return summary
