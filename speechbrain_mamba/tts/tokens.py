"""Codec token extraction for the TTS recipe: every utterance of the
manifests is encoded once to ``tokens_folder/<id>.npy`` ([num_codebooks,
frames] int16). Files are written atomically, so an interrupted run resumes
where it stopped; ``codec.json`` records which codec made the tokens.

Author
------
speechbrain-mamba developers
"""

import json
import logging
from pathlib import Path
from typing import Dict, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from speechbrain_mamba.tts.audio import load_audio
from speechbrain_mamba.tts.codec import EncodecCodec
from speechbrain_mamba.utils.atomic import atomic_target, atomic_write_text
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)


#: Description of the codec inside the tokens folder.
CODEC_FILE = "codec.json"


def token_path(tokens_folder: PathLike, utt_id: str) -> Path:
    """Where the tokens of an utterance are stored.

    Arguments
    ---------
    tokens_folder : str or Path
    utt_id : str

    Returns
    -------
    Path

    Example
    -------
    >>> token_path("tok", "19_198_000000_000000").name
    '19_198_000000_000000.npy'
    """
    return Path(tokens_folder) / f"{utt_id}.npy"


def load_tokens(tokens_folder: PathLike, utt_id: str) -> torch.Tensor:
    """Reads the tokens of an utterance.

    Arguments
    ---------
    tokens_folder : str or Path
    utt_id : str

    Returns
    -------
    torch.Tensor
        [num_codebooks, frames] long.
    """
    path = token_path(tokens_folder, utt_id)
    if not path.is_file():
        raise FileNotFoundError(
            f"codec tokens {path} not found: run the token extraction "
            "(the recipe does it before training)"
        )
    try:
        array = np.load(path)
    except (ValueError, OSError) as err:
        raise ValueError(f"corrupt token file {path}: {err}") from err
    return torch.from_numpy(array.astype(np.int64))


def _check_codec(tokens_folder: Path, codec: EncodecCodec) -> None:
    description = codec.describe()
    meta = tokens_folder / CODEC_FILE
    if meta.is_file():
        stored = json.loads(meta.read_text())
        if stored != description:
            raise ValueError(
                f"{tokens_folder} holds tokens of another codec ({stored}); "
                f"this codec is {description}. Use another tokens_folder or "
                "delete the old tokens."
            )
        return
    atomic_write_text(meta, json.dumps(description, indent=1))


def extract_codec_tokens(
    manifests: Sequence[PathLike],
    codec: EncodecCodec,
    tokens_folder: PathLike,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> Dict[str, int]:
    """Encodes every utterance of the manifests that has no tokens yet.

    Arguments
    ---------
    manifests : sequence of str or Path
        JSON manifests (``id -> {"wav": ...}``).
    codec : EncodecCodec
        The codec.
    tokens_folder : str or Path
        Output folder.
    device : str or torch.device
        Where the codec runs.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``{"extracted": n, "skipped": m}``.
    """
    tokens_folder = Path(tokens_folder)
    tokens_folder.mkdir(parents=True, exist_ok=True)
    _check_codec(tokens_folder, codec)
    if codec.codebook_size > np.iinfo(np.int16).max:
        raise ValueError("codebooks larger than 32767 entries are unsupported")
    entries = {}
    for manifest in manifests:
        with open(manifest, encoding="utf-8") as fin:
            entries.update(json.load(fin))
    todo = {
        utt: e
        for utt, e in entries.items()
        if not token_path(tokens_folder, utt).is_file()
    }
    skipped = len(entries) - len(todo)
    if skipped:
        logger.info("%d utterances already have codec tokens", skipped)
    codec = codec.to(device)
    for utt, entry in tqdm(
        sorted(todo.items()),
        desc="extracting codec tokens",
        unit="utt",
        disable=not progress,
    ):
        wav = load_audio(entry["wav"], codec.sample_rate).to(device)
        codes, _ = codec.encode(wav[None])
        array = codes[0].cpu().numpy().astype(np.int16)
        path = token_path(tokens_folder, utt)
        with atomic_target(path) as tmp, open(tmp, "wb") as fout:
            np.save(fout, array)
    return {"extracted": len(todo), "skipped": skipped}
