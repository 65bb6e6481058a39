"""Training of the AR and NAR codec language models (VALL-E / VALL-M) with
SpeechBrain's ``Brain``: data pipeline over the prepared manifests and the
extracted codec tokens, losses, token accuracy / NLL metrics and
checkpointing.

Author
------
speechbrain-mamba developers
"""

import logging
from typing import Any, Dict, List, Optional, Tuple

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_mamba.lobes.tts.common import IGNORE_INDEX, frames_of
from speechbrain_mamba.tts.metrics import TokenStats, token_nll
from speechbrain_mamba.tts.text import TextFrontEnd
from speechbrain_mamba.tts.tokens import load_tokens

logger = logging.getLogger(__name__)

#: What ``train_stage`` may be.
TRAIN_STAGES = ("ar", "nar", "both")


def sample_prompt_frames(
    frames: torch.Tensor,
    min_ratio: float,
    max_ratio: float,
    max_frames: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Random prompt lengths for NAR training: a fraction in
    [min_ratio, max_ratio] of each utterance, at most ``max_frames``, and
    always leaving at least one target frame.

    Arguments
    ---------
    frames : torch.Tensor
        Frames of each utterance, [batch] (long).
    min_ratio, max_ratio : float
        Range of the prompt fraction.
    max_frames : int, optional
        Longest prompt.
    generator : torch.Generator, optional
        Random generator (CPU).

    Returns
    -------
    torch.Tensor
        [batch] long, in [0, frames - 1].

    Example
    -------
    >>> p = sample_prompt_frames(torch.tensor([100, 1, 8]), 0.25, 0.5)
    >>> bool(25 <= p[0] <= 50), int(p[1]), bool(2 <= p[2] <= 4)
    (True, 0, True)
    """
    if not 0.0 <= min_ratio <= max_ratio < 1.0:
        raise ValueError(
            "need 0 <= min_ratio <= max_ratio < 1, got "
            f"{min_ratio}, {max_ratio}"
        )
    ratio = torch.rand(frames.shape, generator=generator)
    ratio = min_ratio + (max_ratio - min_ratio) * ratio.to(frames.device)
    prompt = torch.round(ratio * frames.float()).long()
    if max_frames is not None:
        prompt = prompt.clamp(max=max_frames)
    return torch.minimum(prompt, frames - 1).clamp(min=0)


def nar_targets(
    codes: torch.Tensor,
    prompt_frames: torch.Tensor,
    code_frames: torch.Tensor,
    stage: torch.Tensor,
) -> torch.Tensor:
    """Codebook ``stage`` of the target frames, ``IGNORE_INDEX`` elsewhere.

    Arguments
    ---------
    codes : torch.Tensor
        [batch, num_codebooks, frames].
    prompt_frames, code_frames : torch.Tensor
        Prompt and total frames per item, [batch].
    stage : torch.Tensor
        Codebook of each item, [batch].

    Returns
    -------
    torch.Tensor
        [batch, frames] long.

    Example
    -------
    >>> codes = torch.arange(12).view(1, 2, 6)
    >>> nar_targets(codes, torch.tensor([2]), torch.tensor([5]),
    ...             torch.tensor([1]))
    tensor([[-100, -100,    8,    9,   10, -100]])
    """
    batch, _, time = codes.shape
    index = stage.view(batch, 1, 1).expand(batch, 1, time)
    chosen = codes.gather(1, index)[:, 0]
    t = torch.arange(time, device=codes.device)[None, :]
    target = (t >= prompt_frames[:, None]) & (t < code_frames[:, None])
    return torch.where(target, chosen, IGNORE_INDEX)


class CodecLMBrain(sb.Brain):
    """Trains the AR model, the NAR model or both (``train_stage``).

    Expected hparams: ``train_stage`` ("ar", "nar" or "both"),
    ``num_codebooks``, ``nar_prompt_min_ratio``, ``nar_prompt_max_ratio``,
    ``nar_prompt_max_frames``, ``valid_prompt_ratio``, ``lr_annealing``,
    ``train_logger``, and modules ``ar`` and ``nar``.

    Validation and test report the loss and, for each trained model, token
    accuracy and NLL: the AR model over first-codebook tokens and EOS, the
    NAR model over codebooks 2..N of the target frames (every stage, with
    a fixed prompt fraction).
    """

    @property
    def stages(self) -> Tuple[str, ...]:
        """The models being trained."""
        stage = self.hparams.train_stage
        if stage not in TRAIN_STAGES:
            raise ValueError(
                f"train_stage must be one of {TRAIN_STAGES}, got {stage!r}"
            )
        return ("ar", "nar") if stage == "both" else (stage,)

    def compute_forward(self, batch, stage):
        """AR logits and NAR logits (with their targets)."""
        batch = batch.to(self.device)
        phonemes, phoneme_lens = batch.phoneme_ids
        codes, code_lens = batch.codes
        codes = codes.transpose(1, 2)  # [batch, codebooks, frames]
        out: Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]] = {}
        if "ar" in self.stages:
            logits = self.modules.ar(
                phonemes, codes[:, 0], phoneme_lens, code_lens
            )
            targets = self.hparams.ar.targets(codes[:, 0], code_lens)
            out["ar"] = [(logits, targets)]
        if "nar" in self.stages:
            batch_size, num_codebooks, time = codes.shape
            frames = frames_of(code_lens, batch_size, time, codes.device)
            if stage == sb.Stage.TRAIN:
                prompt = sample_prompt_frames(
                    frames,
                    self.hparams.nar_prompt_min_ratio,
                    self.hparams.nar_prompt_max_ratio,
                    self.hparams.nar_prompt_max_frames,
                )
                stages = [
                    torch.randint(1, num_codebooks, (batch_size,)).to(
                        codes.device
                    )
                ]
            else:
                ratio = self.hparams.valid_prompt_ratio
                prompt = sample_prompt_frames(frames, ratio, ratio)
                stages = [
                    torch.full((batch_size,), j, device=codes.device)
                    for j in range(1, num_codebooks)
                ]
            out["nar"] = []
            for stage_index in stages:
                logits = self.modules.nar(
                    phonemes,
                    codes,
                    prompt,
                    stage_index,
                    phoneme_lens,
                    code_lens,
                )
                targets = nar_targets(codes, prompt, frames, stage_index)
                out["nar"].append((logits, targets))
        return out

    def compute_objectives(self, predictions, batch, stage):
        """Sum of the AR and NAR cross-entropies (NAR averaged over the
        evaluated stages)."""
        loss = 0.0
        for name, parts in predictions.items():
            losses = [token_nll(logits, t) for logits, t in parts]
            loss = loss + sum(losses) / len(losses)
            for logits, targets in parts:
                self.token_stats[name].append(logits.detach(), targets)
        return loss

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Steps the learning-rate schedule after each optimizer step."""
        if should_step:
            self.hparams.lr_annealing(self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        """Resets the token statistics."""
        self.token_stats = {name: TokenStats() for name in ("ar", "nar")}

    def stage_stats(self, stage_loss: float) -> Dict[str, float]:
        """Loss, accuracies and NLLs of the finished stage."""
        stats: Dict[str, float] = {"loss": stage_loss}
        for name in self.stages:
            summary = self.token_stats[name].summarize()
            stats[f"{name}_acc"] = summary["acc"]
            stats[f"{name}_nll"] = summary["nll"]
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the statistics; checkpoints after validation."""
        stats = self.stage_stats(stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            # checkpoint first: a kill during the save re-runs the epoch,
            # which must then be logged once
            self.checkpointer.save_and_keep_only(
                meta={"loss": stats["loss"], "epoch": epoch},
                min_keys=["loss"],
                num_to_keep=self.hparams.keep_checkpoints,
            )
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
        self.last_stats = stats


def dataio_prepare(
    hparams: Dict[str, Any], frontend: TextFrontEnd
) -> Tuple[Dict[str, DynamicItemDataset], Optional[Any], Optional[Any]]:
    """Datasets over the manifests: phoneme ids and codec tokens.

    Arguments
    ---------
    hparams : dict
        Needs ``train_json``, ``valid_json``, ``test_json``,
        ``tokens_folder``, ``num_codebooks``, ``sorting`` and, for dynamic
        batching, ``dynamic_batching`` and ``dynamic_batch_sampler_train`` /
        ``dynamic_batch_sampler_valid``.
    frontend : TextFrontEnd
        Front end with the symbol table.

    Returns
    -------
    datasets : dict
        "train", "valid", "test" -> DynamicItemDataset (keys ``id``,
        ``phonemes`` [symbols], ``codes`` [frames, codebooks], ``duration``).
    train_sampler, valid_sampler
        DynamicBatchSamplers, or None.
    """
    tokens_folder = hparams["tokens_folder"]
    num_codebooks = hparams["num_codebooks"]

    @sb.utils.data_pipeline.takes("phonemes")
    @sb.utils.data_pipeline.provides("phoneme_ids")
    def text_pipeline(phonemes):
        return frontend.encode_tokens(phonemes.split())

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("codes")
    def codes_pipeline(utt_id):
        codes = load_tokens(tokens_folder, utt_id)
        if codes.shape[0] < num_codebooks:
            raise ValueError(
                f"tokens of {utt_id} have {codes.shape[0]} codebooks, the "
                f"models need {num_codebooks}"
            )
        return codes[:num_codebooks].T.contiguous()

    datasets = {}
    for name in ("train", "valid", "test"):
        data = DynamicItemDataset.from_json(hparams[f"{name}_json"])
        data.add_dynamic_item(text_pipeline)
        data.add_dynamic_item(codes_pipeline)
        data.set_output_keys(["id", "phoneme_ids", "codes", "duration"])
        datasets[name] = data
    sorting = hparams.get("sorting", "random")
    if sorting in ("ascending", "descending"):
        datasets["train"] = datasets["train"].filtered_sorted(
            sort_key="duration", reverse=sorting == "descending"
        )
        hparams["train_dataloader_opts"]["shuffle"] = False
    for name in ("valid", "test"):
        datasets[name] = datasets[name].filtered_sorted(sort_key="duration")

    train_sampler = valid_sampler = None
    if hparams.get("dynamic_batching", False):
        from speechbrain.dataio.sampler import DynamicBatchSampler

        train_sampler = DynamicBatchSampler(
            datasets["train"],
            length_func=lambda x: x["duration"],
            **hparams["dynamic_batch_sampler_train"],
        )
        valid_sampler = DynamicBatchSampler(
            datasets["valid"],
            length_func=lambda x: x["duration"],
            **hparams["dynamic_batch_sampler_valid"],
        )
    return datasets, train_sampler, valid_sampler
