"""Command-line numbers out of range stop argparse with the option named,
before any model is built (speechbrain_mamba.utils.cli and the efficiency
CLI)."""

import argparse

import pytest

from speechbrain_mamba.benchmarks import efficiency
from speechbrain_mamba.utils import cli


@pytest.mark.parametrize(
    "option, value",
    [
        ("--seconds", "-5"),
        ("--seconds", "0"),
        ("--seconds", "nan"),
        ("--repeats", "0"),
        ("--batch", "0"),
        ("--batch", "-2"),
        ("--ar-steps", "0"),
        ("--threads", "0"),
        ("--repeats", "two"),
    ],
)
def test_efficiency_refuses_bad_numbers_before_running(
    monkeypatch, capsys, option, value
):
    def must_not_run(args):
        raise AssertionError(f"models ran with {option} {value}")

    monkeypatch.setattr(efficiency, "run", must_not_run)
    with pytest.raises(SystemExit) as exit_info:
        efficiency.main(["--tasks", "tts", option, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}" in error and repr(value) in error


def test_efficiency_passes_valid_numbers_through(monkeypatch):
    seen = {}
    monkeypatch.setattr(efficiency, "run", lambda args: seen.update(vars(args)))
    efficiency.main(["--tasks", "tts", "--seconds", "0.5", "2", "--batch", "3"])
    assert seen["seconds"] == [0.5, 2.0]
    assert seen["batch"] == 3 and seen["repeats"] == 5


@pytest.mark.parametrize(
    "parse, good, bad",
    [
        (cli.positive_int, {"1": 1, "12": 12}, ["0", "-1", "1.5", "x"]),
        (cli.non_negative_int, {"0": 0, "7": 7}, ["-1", "2.0", ""]),
        (cli.positive_float, {"0.25": 0.25, "3": 3.0}, ["0", "-5", "inf"]),
        (cli.non_negative_float, {"0": 0.0, "1e-3": 1e-3}, ["-0.1", "nan"]),
    ],
)
def test_number_types(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            parse(text)
