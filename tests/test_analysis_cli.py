"""The mutual-information CLI on tiny hub folders (separation and SSL
models) and synthetic audio: CSV + PNG outputs, labels, determinism."""

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_mamba.analysis.audio import list_utterances, read_frame_labels
from speechbrain_mamba.analysis.layerwise import (
    align_frames,
    align_labels,
    collect_layer_states,
)
from speechbrain_mamba.analysis.models import load_model
from speechbrain_mamba.analysis.mutual_information import main

SR = 8000

TASNET_YAML = """
sample_rate: 8000
num_spks: 1
Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: 16
    out_channels: 8
MaskNet: !new:speechbrain_mamba.lobes.mamba_tasnet.MambaTasNetMaskNet
    in_channels: 8
    out_channels: 8
    num_layers: 2
    num_spks: 1
    d_state: 16
Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: 8
    out_channels: 1
    kernel_size: 16
    stride: 8
    bias: False
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <Encoder>
        masknet: !ref <MaskNet>
        decoder: !ref <Decoder>
"""

ASR_YAML = """
sample_rate: 8000
compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: 8000
    n_mels: 20
normalize: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
CNN: !new:speechbrain.lobes.models.convolution.ConvolutionFrontEnd
    input_shape: [8, 10, 20]
    num_blocks: 2
    num_layers_per_block: 1
    out_channels: (8, 8)
    kernel_sizes: (3, 3)
    strides: (2, 2)
    residuals: (False, False)
Transformer: !new:speechbrain_mamba.lobes.asr.MambaTransformerASR
    input_size: 40
    tgt_vocab: 10
    d_model: 16
    nhead: 2
    num_encoder_layers: 3
    num_decoder_layers: 0
    d_ffn: 32
    kernel_size: 3
    encoder_module: {encoder}
    attention_type: RelPosMHAXL
    normalize_before: True
asr_model: !new:torch.nn.ModuleList
    - [!ref <CNN>, !ref <Transformer>]
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        asr: !ref <asr_model>
        normalizer: !ref <normalize>
"""

SSL_YAML = """
sample_rate: 8000
ssl_model: !new:speechbrain_mamba.lobes.ssl.hubert.HuBERTModel
    num_clusters: 5
    encoder_type: {encoder}
    d_model: 16
    num_layers: {layers}
    conv_layers: [[8, 10, 5], [8, 4, 4]]
    final_dim: 8
    nhead: 2
    d_ffn: 32
    pos_kernel_size: 8
    pos_groups: 4
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        ssl_model: !ref <ssl_model>
"""


@pytest.fixture(autouse=True)
def _tiny_cpu_setup(monkeypatch):
    # Tiny models on short signals: one thread and the plain PyTorch scan
    # (no one-off numba compilation) are fastest.
    monkeypatch.setenv("SBMAMBA_NUMBA", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_hub(folder: Path, yaml_text: str) -> Path:
    from hyperpyyaml import load_hyperpyyaml

    folder.mkdir(parents=True)
    (folder / "hyperparams.yaml").write_text(yaml_text)
    hp = load_hyperpyyaml(yaml_text)
    for name, module in hp["pretrainer"].loadables.items():
        if name == "normalizer":  # InputNormalization has its own saver
            module(torch.randn(2, 5, 20), torch.ones(2))
            module._save(folder / f"{name}.ckpt")
        else:
            torch.save(module.state_dict(), folder / f"{name}.ckpt")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mi")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        n = int(SR * (0.4 + 0.1 * i))
        t = np.arange(n) / SR
        wav = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)
        wav += 0.05 * rng.standard_normal(n)
        sf.write(root / f"u{i}.wav", wav.astype(np.float32), SR)
        clean = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)
        sf.write(root / f"c{i}.wav", clean.astype(np.float32), SR)
        labels = " ".join(str(v) for v in (np.arange(20) // 5 + i) % 3)
        rows.append(
            {
                "ID": f"u{i}",
                "wav": f"$data_root/u{i}.wav",
                "clean": f"$data_root/c{i}.wav",
                "labels": labels,
            }
        )
    with open(root / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["ID", "wav", "clean", "labels"])
        writer.writeheader()
        writer.writerows(rows)
    hubs = {
        "tasnet": make_hub(root / "tasnet", TASNET_YAML),
        "bimamba": make_hub(
            root / "bimamba", SSL_YAML.format(encoder="bimamba", layers=2)
        ),
        "transformer": make_hub(
            root / "transformer",
            SSL_YAML.format(encoder="transformer", layers=3),
        ),
    }
    return root, hubs


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_writes_csv_and_plot_for_several_models(data, tmp_path):
    root, hubs = data
    out = tmp_path / "out"
    args = [
        "--model",
        f"mamba={hubs['bimamba']}",
        "--model",
        str(hubs["transformer"]),
        "--audio",
        str(root / "data.csv"),
        "--label-column",
        "labels",
        "--out",
        str(out),
        "--estimator",
        "ksg",
        "--device",
        "cpu",
        "--max-frames",
        "1000",
    ]
    assert main(args) == 0
    rows = read_rows(out / "mi_layers.csv")
    assert [r["model"] for r in rows] == ["mamba"] * 2 + ["transformer"] * 3
    assert [r["layer_index"] for r in rows] == ["1", "2", "1", "2", "3"]
    assert rows[0]["layer"] == "encoder.net.layers.0"
    for r in rows:
        assert np.isfinite(float(r["mi_input"]))
        assert np.isfinite(float(r["mi_label"]))
        assert r["dim"] == "16" and r["estimator"] == "ksg"
    assert len(read_rows(out / "mi_mamba.csv")) == 2
    png = (out / "mi_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # deterministic: a second run gives the same numbers
    main(args[:-4] + ["--device", "cpu", "--max-frames", "1000"])
    again = read_rows(out / "mi_layers.csv")
    assert [r["mi_input"] for r in again] == [r["mi_input"] for r in rows]


def test_separation_model_with_mine_and_audio_targets(data, tmp_path):
    root, hubs = data
    out = tmp_path / "sep"
    main(
        [
            "--model",
            str(hubs["tasnet"]),
            "--audio",
            str(root / "data.csv"),
            "--label-column",
            "clean",
            "--out",
            str(out),
            "--reference",
            "fbank",
            "--steps",
            "20",
            "--hidden",
            "16",
            "--device",
            "cpu",
            "--max-frames",
            "1500",
        ]
    )
    rows = read_rows(out / "mi_tasnet.csv")
    assert [r["layer"] for r in rows] == [
        f"mamba_net.layers.{i}" for i in range(2)
    ]
    assert all(int(r["frames"]) == 1500 for r in rows)
    assert all(r["reference"] == "fbank" for r in rows)
    assert all(np.isfinite(float(r["mi_label"])) for r in rows)


def test_collected_frames_are_paired_and_unpadded(data):
    root, hubs = data
    model = load_model(hubs["bimamba"], device="cpu")
    utts = list_utterances(root / "data.csv", label_column="labels")
    collected = collect_layer_states(model, utts, batch_size=3, max_frames=None)
    wav_lens = [sf.info(u.path).frames for u in utts]
    frames = [int(model.root.num_frames(n)) for n in wav_lens]
    assert len(collected.states) == 2
    for states, ref, labels in zip(
        collected.states, collected.reference, collected.labels
    ):
        assert states.shape == (sum(frames), 16)
        assert ref.shape == (sum(frames), 16)
        assert labels.shape == (sum(frames),)
    # batching does not change the frames of an utterance
    alone = collect_layer_states(model, utts[:1], batch_size=1, max_frames=None)
    torch.testing.assert_close(
        alone.states[1], collected.states[1][: frames[0]], atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("encoder", ["conmamba", "conformer"])
def test_asr_hub_folder(data, tmp_path, encoder):
    root, _ = data
    hub = make_hub(tmp_path / encoder, ASR_YAML.format(encoder=encoder))
    model = load_model(hub, device="cpu")
    assert model.kind == "asr" and model.layers == "encoder.layers.*"
    utts = list_utterances(root / "data.csv")
    collected = collect_layer_states(
        model, utts, reference="fbank", batch_size=2, max_frames=None
    )
    assert collected.names == [f"encoder.layers.{i}" for i in range(3)]
    # 10 ms filterbank frames, subsampled 4x by the CNN
    frames = sum(
        round((sf.info(u.path).frames / 80 + 1) / 4 + 0.5) for u in utts
    )
    for states, ref in zip(collected.states, collected.reference):
        assert states.shape[1] == 16 and ref.shape[1] == 40
        assert abs(states.shape[0] - frames) <= len(utts)
        assert states.shape[0] == ref.shape[0]


def test_helpers_and_errors(data, tmp_path):
    root, _ = data
    assert align_labels(np.array([0, 1, 2]), 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert align_frames(torch.ones(3, 2), 5).shape == (5, 2)
    np.save(tmp_path / "l.npy", np.array([1, 2, 3]))
    assert read_frame_labels(str(tmp_path / "l.npy")).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="integers separated by spaces"):
        read_frame_labels("a b")
    assert len(list_utterances(root, max_utterances=3)) == 3
    with pytest.raises(ValueError, match="no column 'nope'"):
        list_utterances(root / "data.csv", label_column="nope")
    with pytest.raises(FileNotFoundError, match="no hyperparams.yaml"):
        load_model(tmp_path, device="cpu")
    model = load_model(data[1]["tasnet"], device="cpu")
    model.sample_rate = 16000
    utts = list_utterances(root / "data.csv")
    with pytest.raises(ValueError, match="pass --resample"):
        collect_layer_states(model, utts)


def test_asr_normalizer_statistics_follow_the_model_device(data, tmp_path):
    # InputNormalization keeps its global statistics in plain attributes,
    # which nn.Module.to does not move: on a GPU they stayed on the CPU and
    # the ASR analysis failed with "Expected all tensors to be on the same
    # device". The meta device stands in for a GPU here.
    hub = make_hub(tmp_path / "asr", ASR_YAML.format(encoder="conmamba"))
    model = load_model(hub, device="cpu")
    normalize = model.modules["normalize"]
    mean = normalize.glob_mean.clone()
    assert mean.numel() == 20
    model.to("meta")
    assert normalize.glob_mean.device.type == "meta"
    assert normalize.glob_std.device.type == "meta"
    assert next(model.modules.parameters()).device.type == "meta"
    assert normalize.glob_mean.shape == mean.shape
