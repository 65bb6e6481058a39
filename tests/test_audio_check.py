"""The shared audio check of the data preparations: every defect is an
AudioFileError naming the file and what the recipe expects, and the record
of checked files lets unchanged files skip a second decode."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from speechbrain_mamba.utils.audio_check import (
    SHOWN_FAILURES,
    AudioFileError,
    recorded_audio_unchanged,
    validate_audio_file,
    validate_audio_files,
)

RATE = 16000


def tone(seconds=1.0, rate=RATE):
    t = np.arange(int(seconds * rate)) / rate
    return (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def cut_to_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("ext", ["flac", "wav"])
def test_a_good_file_passes_with_its_length(tmp_path, ext):
    path = tmp_path / f"a.{ext}"
    sf.write(str(path), tone(1.5), RATE)
    info = validate_audio_file(path, RATE)
    assert (info.frames, info.sample_rate) == (24000, RATE)
    assert info.duration == 1.5
    # any rate is accepted when the reader resamples
    assert validate_audio_file(path, None).frames == 24000


@pytest.mark.parametrize("ext", ["flac", "wav"])
def test_a_file_cut_to_half_is_truncated(tmp_path, ext):
    """libsndfile still reads both headers (FLAC keeps the promised length,
    WAV shrinks it to what is left): both are caught."""
    path = tmp_path / f"cut.{ext}"
    sf.write(str(path), tone(2.0), RATE)
    cut_to_half(path)
    assert sf.info(str(path)).frames > 0
    with pytest.raises(AudioFileError, match=f"{path} is truncated") as err:
        validate_audio_file(path, RATE)
    assert err.value.path == str(path)


@pytest.mark.parametrize(
    "write, match",
    [
        (
            lambda p: sf.write(str(p), np.stack([tone()] * 2, 1), RATE),
            "has 2 channels; the recipe expects mono",
        ),
        (
            lambda p: sf.write(str(p), tone(rate=8000), 8000),
            "has sample rate 8000 Hz; expected 16000 Hz",
        ),
        (lambda p: sf.write(str(p), np.zeros(0), RATE), "is empty"),
        (lambda p: p.write_bytes(b"RIFF not really"), "cannot read audio"),
        (lambda p: None, "does not exist"),
    ],
)
def test_each_problem_names_the_file(tmp_path, write, match):
    path = tmp_path / "bad.wav"
    write(path)
    with pytest.raises(AudioFileError, match=match) as err:
        validate_audio_file(path, RATE)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_found_with_their_position(tmp_path, value):
    audio = tone(5.0)  # several decoding blocks
    audio[70001] = value
    path = tmp_path / "nan.wav"
    sf.write(str(path), audio, RATE, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="the first at sample 70001"):
        validate_audio_file(path, RATE)


def test_advice_is_appended(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(str(path), tone(rate=48000), 48000)
    with pytest.raises(AudioFileError, match=r"16000 Hz \(resample it\)"):
        validate_audio_file(path, RATE, advice="resample it")


def test_the_batch_reports_every_bad_file(tmp_path):
    paths = []
    for index in range(SHOWN_FAILURES + 4):
        path = tmp_path / f"{index:02d}.wav"
        sf.write(str(path), tone(0.1), RATE if index % 2 else 8000)
        paths.append(path)
    with pytest.raises(AudioFileError) as err:
        validate_audio_files(paths, RATE)
    bad = [str(p) for p in paths[::2]]
    assert [path for path, _ in err.value.failures] == bad
    message = str(err.value)
    assert message.startswith(f"{len(bad)} audio files failed the check")
    assert message.count("\n  - ") == min(len(bad), SHOWN_FAILURES)
    assert validate_audio_files(paths[1::2], RATE)[0].frames == 1600


def test_the_record_skips_unchanged_files_and_rechecks_changed_ones(
    tmp_path,
):
    path = tmp_path / "a.flac"
    sf.write(str(path), tone(1.0), RATE)
    record = tmp_path / "record.json"
    assert not recorded_audio_unchanged(record)
    assert validate_audio_files([path], RATE, record)[0].frames == RATE
    assert recorded_audio_unchanged(record)
    entry = json.loads(record.read_text())["files"][str(path)]
    assert entry["frames"] == RATE

    # same size and time: trusted without decoding (proved by a change
    # that hides from size and mtime)
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert recorded_audio_unchanged(record)
    assert validate_audio_files([path], RATE, record)[0].frames == RATE

    # a new modification time: decoded again and refused
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not recorded_audio_unchanged(record)
    with pytest.raises(AudioFileError, match=str(path)):
        validate_audio_files([path], RATE, record)
    # a failure is recorded as such, never as a pass
    assert not recorded_audio_unchanged(record)
    with pytest.raises(AudioFileError, match=str(path)):
        validate_audio_files([path], RATE, record)


def test_the_record_does_not_hide_another_expected_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), tone(0.5), RATE)
    record = tmp_path / "record.json"
    validate_audio_files([path], RATE, record)
    with pytest.raises(AudioFileError, match="expected 24000 Hz"):
        validate_audio_files([path], 24000, record)


def test_a_removed_file_invalidates_the_record(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), tone(0.5), RATE)
    record = tmp_path / "record.json"
    validate_audio_files([path], RATE, record)
    path.unlink()
    assert not recorded_audio_unchanged(record)
