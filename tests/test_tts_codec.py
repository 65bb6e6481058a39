"""EnCodec interface (a small random codec of the 24 kHz architecture,
saved and loaded through the real from_pretrained path) and resumable
codec token extraction."""

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_mamba.tts.codec import (
    EncodecCodec,
    build_random_codec,
    codec_from_config,
)
from speechbrain_mamba.tts.tokens import (
    extract_codec_tokens,
    load_tokens,
    token_path,
)


@pytest.fixture(scope="module")
def codec_folder(tmp_path_factory):
    return build_random_codec(
        tmp_path_factory.mktemp("codec") / "encodec",
        num_filters=2,
        hidden_size=8,
    )


@pytest.fixture(scope="module")
def codec(codec_folder):
    return EncodecCodec.from_pretrained(codec_folder, bandwidth=6.0)


def test_random_codec_has_the_24khz_6kbps_layout(codec_folder, codec):
    assert (codec_folder / "config.json").is_file()
    assert codec.describe() == {
        "sample_rate": 24000,
        "frame_rate": 75.0,
        "num_codebooks": 8,
        "codebook_size": 1024,
        "bandwidth": 6.0,
    }
    assert not any(p.requires_grad for p in codec.parameters())


def test_encode_decode_shapes_and_lengths(codec):
    wavs = 0.1 * torch.randn(2, 24000)
    codes, code_lens = codec.encode(wavs, torch.tensor([1.0, 0.5]))
    assert codes.shape == (2, 8, 75) and codes.dtype == torch.long
    torch.testing.assert_close(code_lens, torch.tensor([1.0, 38 / 75]))
    assert 0 <= int(codes.min()) and int(codes.max()) < 1024
    # codebooks are initialised from data: tokens are spread out
    assert all(codes[0, k].unique().numel() > 3 for k in range(8))
    wav, wav_lens = codec.decode(codes, code_lens)
    assert wav.shape == (2, 75 * 320) and torch.isfinite(wav).all()
    assert codec.encode(torch.zeros(1000))[0].shape == (1, 8, 4)


def test_state_dict_round_trip_through_config(codec):
    rebuilt = codec_from_config(codec.config_dict(), bandwidth=6.0)
    missing = rebuilt.load_state_dict(codec.state_dict(), strict=True)
    assert not missing.missing_keys
    wav = 0.1 * torch.randn(1, 4000)
    assert torch.equal(rebuilt.encode(wav)[0], codec.encode(wav)[0])


def test_codec_errors(codec, codec_folder, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        EncodecCodec.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="could not load the EnCodec codec"):
        EncodecCodec.from_pretrained(
            "nobody/no-such-codec", local_files_only=True
        )
    with pytest.raises(ValueError, match="bandwidth 7.0 kbps"):
        EncodecCodec.from_pretrained(codec_folder, bandwidth=7.0)
    with pytest.raises(ValueError, match="empty audio"):
        codec.encode(torch.zeros(1, 0))
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.full((1, 100), float("nan")))
    with pytest.raises(ValueError, match="num_codebooks=8"):
        codec.decode(torch.zeros(1, 4, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="codes must be in"):
        codec.decode(torch.full((1, 8, 10), 1024))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        EncodecCodec.from_pretrained(codec_folder)


def test_fewer_codebooks_at_lower_bandwidth(codec_folder):
    assert EncodecCodec.from_pretrained(codec_folder, 3.0).num_codebooks == 4


def write_manifest(folder, rates):
    manifest = {}
    for index, rate in enumerate(rates):
        wav = folder / f"utt{index}.wav"
        sf.write(str(wav), 0.1 * np.random.randn(rate // 2), rate)
        manifest[f"utt{index}"] = {"wav": str(wav), "duration": 0.5}
    path = folder / "train.json"
    path.write_text(json.dumps(manifest))
    return path


def test_token_extraction_is_resumable(codec, codec_folder, tmp_path):
    manifest = write_manifest(tmp_path, [24000, 24000, 16000])
    tokens = tmp_path / "tokens"
    assert extract_codec_tokens([manifest], codec, tokens, progress=False) == {
        "extracted": 3,
        "skipped": 0,
    }
    first = load_tokens(tokens, "utt0")
    assert first.shape == (8, 38) and first.dtype == torch.long
    # 16 kHz audio is resampled to the codec rate: same number of frames
    assert load_tokens(tokens, "utt2").shape == (8, 38)
    stamp = token_path(tokens, "utt0").stat().st_mtime_ns
    # second run: nothing to do
    assert extract_codec_tokens([manifest], codec, tokens, progress=False) == {
        "extracted": 0,
        "skipped": 3,
    }
    # an interrupted run left one utterance out: only it is extracted
    token_path(tokens, "utt1").unlink()
    assert extract_codec_tokens([manifest], codec, tokens, progress=False) == {
        "extracted": 1,
        "skipped": 2,
    }
    assert token_path(tokens, "utt0").stat().st_mtime_ns == stamp
    assert not list(tokens.glob(".*tmp*"))
    # tokens of another codec configuration are refused
    other = EncodecCodec.from_pretrained(codec_folder, bandwidth=3.0)
    with pytest.raises(ValueError, match="tokens of another codec"):
        extract_codec_tokens([manifest], other, tokens, progress=False)
    with pytest.raises(FileNotFoundError, match="run the token extraction"):
        load_tokens(tokens, "missing")
