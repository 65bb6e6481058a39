"""The LibriSpeech data pipeline of the ASR and SSL fine-tuning recipes:
the SentencePiece tokenizer (:func:`prepare_tokenizer`) and the datasets,
audio/text pipelines and batch samplers (:func:`dataio_prepare`) built from
the CSV files of :mod:`speechbrain_mamba.data.librispeech_prepare`.

Author
------
speechbrain-mamba developers
"""

import shutil
from pathlib import Path
from typing import Any, Dict

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from speechbrain_mamba.utils.atomic import atomic_target

#: Name of the tokenizer model inside ``save_folder`` (what export copies).
TOKENIZER_FILE = "tokenizer.ckpt"


def prepare_tokenizer(hparams: Dict[str, Any]) -> Any:
    """Loads the pretrained tokenizer, or trains a SentencePiece model on the
    training transcripts when ``pretrained_lm_tokenizer_path`` is empty.

    The model ends up in ``save_folder/tokenizer.ckpt`` and is loaded into
    ``hparams["tokenizer"]`` (a ``sentencepiece.SentencePieceProcessor``).

    Arguments
    ---------
    hparams : dict
        Needs ``save_folder``, ``tokenizer``, ``output_neurons``,
        ``token_type``, ``train_csv``, ``bos_index``, ``eos_index`` and
        optionally ``pretrained_lm_tokenizer_path`` and
        ``character_coverage``.

    Returns
    -------
    sentencepiece.SentencePieceProcessor
        The loaded tokenizer.
    """
    save_folder = Path(hparams["save_folder"])
    save_folder.mkdir(parents=True, exist_ok=True)
    tokenizer = hparams["tokenizer"]
    target = save_folder / TOKENIZER_FILE
    source = hparams.get("pretrained_lm_tokenizer_path")
    if source:
        from speechbrain.utils.parameter_transfer import Pretrainer

        pretrainer = Pretrainer(
            collect_in=save_folder,
            loadables={"tokenizer": tokenizer},
            paths={"tokenizer": f"{source}/tokenizer.ckpt"},
        )
        run_on_main(pretrainer.collect_files)
        pretrainer.load_collected()
    else:
        from speechbrain.tokenizers.SentencePiece import SentencePiece

        trained = SentencePiece(
            model_dir=str(save_folder),
            vocab_size=hparams["output_neurons"],
            annotation_train=hparams["train_csv"],
            annotation_read="wrd",
            model_type=hparams["token_type"],
            character_coverage=hparams.get("character_coverage", 1.0),
            bos_id=hparams["bos_index"],
            eos_id=hparams["eos_index"],
        )
        if if_main_process():
            with atomic_target(target) as tmp:
                shutil.copyfile(trained.prefix_model_file + ".model", tmp)
        sb.utils.distributed.ddp_barrier()
        tokenizer.load(str(target))
    if tokenizer.vocab_size() > hparams["output_neurons"]:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size()} tokens but the "
            f"model has output_neurons={hparams['output_neurons']}"
        )
    return tokenizer


def dataio_prepare(hparams: Dict[str, Any], tokenizer: Any, kind: str):
    """Builds the datasets, audio/text pipelines and batch samplers.

    Arguments
    ---------
    hparams : dict
        Loaded hyperparameters (``train_csv``, ``valid_csv``, ``test_csv``,
        ``sorting``, ``dynamic_batching``, ``bos_index``, ``eos_index``, and
        optionally ``speed_perturb``).
    tokenizer : sentencepiece.SentencePieceProcessor
        Encodes the transcripts.
    kind : str
        ``"s2s"`` (adds ``tokens_bos`` / ``tokens_eos``) or ``"ctc"``.

    Returns
    -------
    train_data, valid_data : DynamicItemDataset
    test_datasets : dict
        Test set name (CSV stem) -> DynamicItemDataset.
    train_sampler, valid_sampler : DynamicBatchSampler or None
    """
    if kind not in ("s2s", "ctc"):
        raise ValueError(f"kind must be 's2s' or 'ctc'; got {kind!r}")
    data_folder = hparams["data_folder"]

    def load(csv_path):
        if not Path(csv_path).is_file():
            raise FileNotFoundError(
                f"data CSV {csv_path} does not exist (run the data "
                "preparation or fix the *_csv hyperparameters)"
            )
        return sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=csv_path, replacements={"data_root": data_folder}
        )

    train_data = load(hparams["train_csv"])
    sorting = hparams["sorting"]
    if sorting in ("ascending", "descending"):
        train_data = train_data.filtered_sorted(
            sort_key="duration", reverse=sorting == "descending"
        )
        hparams["train_dataloader_opts"]["shuffle"] = False
    elif sorting != "random":
        raise ValueError(
            f"sorting must be random, ascending or descending; got {sorting!r}"
        )
    valid_data = load(hparams["valid_csv"]).filtered_sorted(sort_key="duration")
    test_datasets = {
        Path(csv_file).stem: load(csv_file).filtered_sorted(sort_key="duration")
        for csv_file in hparams["test_csv"]
    }
    eval_sets = [valid_data] + list(test_datasets.values())
    datasets = [train_data] + eval_sets

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline_train(wav):
        sig = sb.dataio.dataio.read_audio(wav)
        speed_perturb = hparams.get("speed_perturb")
        if speed_perturb is not None:
            sig = speed_perturb(sig.unsqueeze(0)).squeeze(0)
        return sig

    sb.dataio.dataset.add_dynamic_item(eval_sets, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item([train_data], audio_pipeline_train)

    bos, eos = hparams["bos_index"], hparams["eos_index"]

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides(
        "wrd", "tokens_list", "tokens_bos", "tokens_eos", "tokens"
    )
    def text_pipeline(wrd):
        yield wrd
        tokens_list = tokenizer.encode_as_ids(wrd)
        yield tokens_list
        yield torch.LongTensor([bos] + tokens_list)
        yield torch.LongTensor(tokens_list + [eos])
        yield torch.LongTensor(tokens_list)

    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    keys = ["id", "sig", "wrd", "tokens"]
    if kind == "s2s":
        keys += ["tokens_bos", "tokens_eos"]
    sb.dataio.dataset.set_output_keys(datasets, keys)

    train_sampler = valid_sampler = None
    if hparams["dynamic_batching"]:
        from speechbrain.dataio.sampler import DynamicBatchSampler

        train_sampler = DynamicBatchSampler(
            train_data,
            length_func=lambda x: x["duration"],
            **hparams["dynamic_batch_sampler_train"],
        )
        valid_sampler = DynamicBatchSampler(
            valid_data,
            length_func=lambda x: x["duration"],
            **hparams["dynamic_batch_sampler_valid"],
        )
    return train_data, valid_data, test_datasets, train_sampler, valid_sampler
