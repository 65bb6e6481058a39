"""The LibriSpeech ASR recipe driver shared by the S2S and CTC ``train.py``
scripts: data preparation, tokenizer, training, checkpoint averaging and
testing (WER/CER files), with SpeechBrain's usual command line::

    python train.py hparams/conmamba_small.yaml --data_folder DATA [...]
    torchrun --nproc_per_node=2 train.py hparams/conmamba_small.yaml ...

Author
------
speechbrain-mamba developers
"""

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_mamba.asr.brain import (
    CTCASR,
    S2SASR,
    loader_options,
)
from speechbrain_mamba.data.librispeech_dataio import (
    dataio_prepare,
    prepare_tokenizer,
)
from speechbrain_mamba.data.librispeech_prepare import (
    prepare_librispeech,
    recipe_prepare_kwargs,
)

logger = logging.getLogger(__name__)


def attach_language_model(hparams: Dict[str, Any], device: str) -> None:
    """Adds the pretrained Transformer LM to the test beam search (joint
    CTC / attention / LM scoring, as in SpeechBrain's Conformer recipe).

    Arguments
    ---------
    hparams : dict
        Needs ``lm_model`` (a class or partial building the LM),
        ``pretrained_lm_tokenizer_path`` (folder or HF repo holding
        ``lm.ckpt``), ``ctc_scorer``, ``ctc_weight_decode``, ``lm_weight``,
        ``lm_temperature``, ``save_folder`` and ``test_search``.
    device : str
        Device of the model.
    """
    from speechbrain.decoders.scorer import ScorerBuilder, TransformerLMScorer
    from speechbrain.utils.parameter_transfer import Pretrainer

    source = hparams.get("pretrained_lm_tokenizer_path")
    if not source:
        raise ValueError(
            "use_lm: True needs pretrained_lm_tokenizer_path (a folder or "
            "HuggingFace repo with lm.ckpt and the matching tokenizer.ckpt)"
        )
    lm = hparams["lm_model"]()
    pretrainer = Pretrainer(
        collect_in=hparams["save_folder"],
        loadables={"lm": lm},
        paths={"lm": f"{source}/lm.ckpt"},
    )
    run_on_main(pretrainer.collect_files)
    pretrainer.load_collected()
    lm.requires_grad_(False)
    lm.to(device).eval()
    scorer = ScorerBuilder(
        full_scorers=[
            TransformerLMScorer(
                language_model=lm, temperature=hparams["lm_temperature"]
            ),
            hparams["ctc_scorer"],
        ],
        weights={
            "ctc": hparams["ctc_weight_decode"],
            "transformerlm": hparams["lm_weight"],
        },
    )
    hparams["test_search"].scorer = scorer
    hparams["lm_model_instance"] = lm


def _ctc_test_searcher(hparams: Dict[str, Any], tokenizer: Any) -> Any:
    options = hparams.get("test_beam_search")
    if not options:
        return None
    from speechbrain.decoders.ctc import CTCBeamSearcher

    vocab = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size())]
    # Model outputs beyond the tokenizer (output_neurons larger than a char
    # vocabulary) decode to nothing.
    vocab += [""] * (hparams["output_neurons"] - len(vocab))
    return CTCBeamSearcher(**options, vocab_list=vocab)


def run_recipe(
    argv: Sequence[str],
    mode: str = "s2s",
    *,
    brain_class: Optional[type] = None,
) -> Dict[str, Path]:
    """Runs a recipe end to end: the whole body of
    ``recipes/LibriSpeech/ASR/{S2S,CTC}/train.py``.

    Arguments
    ---------
    argv : list of str
        SpeechBrain command line (hparams file, ``--key value`` overrides,
        run options such as ``--device``).
    mode : str
        ``"s2s"`` (joint CTC/attention, S2S/train.py) or ``"ctc"``
        (CTC/train.py).
    brain_class : type, optional
        The Brain to run (a subclass of the kind's; default: ``S2SASR`` or
        ``CTCASR``).

    Returns
    -------
    dict
        Test set name -> WER file written.
    """
    if mode not in ("s2s", "ctc"):
        raise ValueError(f"mode must be 's2s' or 'ctc'; got {mode!r}")
    kind = mode
    hparams_file, run_opts, overrides = sb.parse_arguments(list(argv))
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    run_on_main(prepare_librispeech, kwargs=recipe_prepare_kwargs(hparams))
    tokenizer = prepare_tokenizer(hparams)
    (
        train_data,
        valid_data,
        test_datasets,
        train_sampler,
        valid_sampler,
    ) = dataio_prepare(hparams, tokenizer, kind)

    if brain_class is None:
        brain_class = S2SASR if kind == "s2s" else CTCASR
    brain = brain_class(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.tokenizer = tokenizer
    if kind == "s2s" and hparams.get("use_lm", False):
        attach_language_model(hparams, brain.device)
    if kind == "ctc":
        brain.test_searcher = _ctc_test_searcher(hparams, tokenizer)

    train_opts, valid_opts = loader_options(
        hparams, train_sampler, valid_sampler
    )
    if not hparams.get("skip_train", False):
        brain.fit(
            hparams["epoch_counter"],
            train_data,
            valid_data,
            train_loader_kwargs=train_opts,
            valid_loader_kwargs=valid_opts,
        )

    wer_folder = Path(hparams["output_wer_folder"])
    wer_folder.mkdir(parents=True, exist_ok=True)
    key = {"max_key": "ACC"} if kind == "s2s" else {"min_key": "WER"}
    written = {}
    for name, dataset in test_datasets.items():
        brain.test_wer_file = str(wer_folder / f"wer_{name}.txt")
        brain.test_cer_file = str(wer_folder / f"cer_{name}.txt")
        brain.evaluate(
            dataset,
            test_loader_kwargs=hparams["test_dataloader_opts"],
            **key,
        )
        written[name] = Path(brain.test_wer_file)
    return written
