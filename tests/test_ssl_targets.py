"""k-means and target extraction (resumable) for HuBERT-style pretraining."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_mamba.ssl.kmeans import KMeans
from speechbrain_mamba.ssl.targets import (
    MFCCFeatures,
    extract_targets,
    label_split,
    read_csv_audio,
    read_km,
)

SR = 16000


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_kmeans_recovers_separated_clusters_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 3, generator=g) * 10
    truth = torch.randint(0, 5, (2000,), generator=g)
    x = centers[truth] + 0.3 * torch.randn(2000, 3, generator=g)
    km = KMeans(5, batch_size=256, max_iter=30, seed=0, device="cpu").fit(x)
    pred = km.predict(x)
    # a one-to-one mapping between predicted and true clusters
    pairs = {(int(p), int(t)) for p, t in zip(pred, truth)}
    assert len(pairs) == 5
    assert km.inertia < 0.1  # in standardised units
    again = KMeans(5, batch_size=256, max_iter=30, seed=0, device="cpu").fit(x)
    assert torch.equal(again.predict(x), pred)
    loaded = KMeans.load(km.save(tmp_path / "km.pt"), device="cpu")
    assert torch.equal(loaded.predict(x), pred)
    with pytest.raises(ValueError, match="fitted on 3"):
        loaded.predict(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least n_clusters"):
        KMeans(5, device="cpu").fit(torch.zeros(3, 2))
    with pytest.raises(RuntimeError, match="before fit"):
        KMeans(2, device="cpu").predict(x)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Tone sequences: the MFCC clusters follow the tones."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    rows = {"train": [], "dev": []}
    for split, count in (("train", 6), ("dev", 2)):
        for i in range(count):
            n = SR // 2 + 1600 * i
            freq = np.repeat(rng.choice([300.0, 1200.0, 3000.0], 5), n // 5 + 1)
            wav = 0.5 * np.sin(2 * np.pi * np.cumsum(freq[:n]) / SR)
            wav += 0.01 * rng.standard_normal(n)
            path = root / f"{split}{i}.wav"
            sf.write(path, wav.astype(np.float32), SR)
            rows[split].append(
                {
                    "ID": f"{split}{i}",
                    "duration": n / SR,
                    "wav": f"$data_root/{path.name}",
                }
            )
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["ID", "duration", "wav"])
            writer.writeheader()
            writer.writerows(rows[split])
    return root


def test_extract_targets_writes_labels_per_frame(corpus, tmp_path):
    csvs = {"train": corpus / "train.csv", "dev": corpus / "dev.csv"}
    info = extract_targets(
        csvs, tmp_path, n_clusters=4, data_root=corpus, seed=0, device="cpu"
    )
    assert info["complete"] and info["options"]["features"] == "mfcc"
    labels = read_km(tmp_path / "train.km")
    assert list(labels) == [f"train{i}" for i in range(6)]
    features = MFCCFeatures(SR, 20.0)
    for utt_id, path in read_csv_audio(csvs["train"], corpus):
        wav = torch.from_numpy(sf.read(path, dtype="float32")[0])
        assert len(labels[utt_id]) == features(wav).shape[0]
        # 16 kHz, 20 ms frames: one label per 320 samples (+1, centred)
        assert len(labels[utt_id]) == len(wav) // 320 + 1
    assert info["splits"]["train"]["used_clusters"] >= 3
    assert (
        info["chance_majority"] == info["splits"]["train"]["majority_fraction"]
    )
    assert 0.25 <= info["chance_majority"] < 1.0
    stored = json.loads((tmp_path / "targets.json").read_text())
    assert stored == json.loads(json.dumps(info))
    # a second call reuses everything
    before = (tmp_path / "train.km").stat().st_mtime_ns
    extract_targets(
        csvs, tmp_path, n_clusters=4, data_root=corpus, seed=0, device="cpu"
    )
    assert (tmp_path / "train.km").stat().st_mtime_ns == before
    # new options: k-means is fitted again and the labels rewritten
    info3 = extract_targets(
        csvs, tmp_path, n_clusters=3, data_root=corpus, seed=0, device="cpu"
    )
    assert max(max(v) for v in read_km(tmp_path / "dev.km").values()) <= 2
    assert info3["options"]["n_clusters"] == 3


def test_labelling_resumes_after_a_kill(corpus, tmp_path):
    rows = read_csv_audio(corpus / "train.csv", corpus)
    features = MFCCFeatures(SR, 20.0)
    data = torch.cat(
        [
            features(torch.from_numpy(sf.read(p, dtype="float32")[0]))
            for _, p in rows
        ]
    )
    km = KMeans(4, seed=0, device="cpu").fit(data)
    full = label_split(rows, features, km, tmp_path / "a.km", SR)
    expected = full.read_text()
    # simulate a run killed while writing the third line
    lines = expected.splitlines(keepends=True)
    partial = tmp_path / "b.km.partial"
    partial.write_text(lines[0] + lines[1] + lines[2][:7])
    calls = []

    def counting(wav):
        calls.append(1)
        return features(wav)

    out = label_split(rows, counting, km, tmp_path / "b.km", SR)
    assert out.read_text() == expected
    assert len(calls) == len(rows) - 2  # only the missing utterances
    assert not partial.exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="data CSV not found"):
        read_csv_audio(tmp_path / "none.csv")
    (tmp_path / "x.csv").write_text("ID,path\na,b\n")
    with pytest.raises(ValueError, match="ID and wav"):
        read_csv_audio(tmp_path / "x.csv")
    (tmp_path / "bad.km").write_text("u1\n")
    with pytest.raises(ValueError, match="no labels"):
        read_km(tmp_path / "bad.km")
    with pytest.raises(KeyError, match="train"):
        extract_targets({"dev": tmp_path / "x.csv"}, tmp_path, device="cpu")
