"""Mutual-information estimators against the analytic MI of correlated
Gaussians, -d/2 log(1 - rho^2)."""

import math

import numpy as np
import pytest
import torch

from speechbrain_mamba.analysis.estimators import (
    correlated_gaussians,
    estimate_mi,
    gaussian_mi,
    infonce,
    ksg,
    ksg_discrete,
    mine,
)

N = 4000
CASES = [(2, 0.3), (2, 0.6), (2, 0.9), (4, 0.5), (4, 0.8), (4, 0.9)]


def tolerance(true_mi: float) -> float:
    """0.15 nats or 15 %, whichever is larger."""
    return max(0.15, 0.15 * true_mi)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads only add overhead
    yield
    torch.set_num_threads(threads)


def test_gaussian_mi_formula():
    assert gaussian_mi(0.0, 3) == 0.0
    assert gaussian_mi(0.5, 2) == pytest.approx(-math.log(0.75))
    with pytest.raises(ValueError, match="rho"):
        gaussian_mi(1.0, 2)


def test_correlated_gaussians_statistics():
    x, y = correlated_gaussians(50000, 3, 0.7, seed=3)
    assert x.shape == y.shape == (50000, 3)
    corr = np.corrcoef(np.concatenate([x, y], 1).T)
    np.testing.assert_allclose(np.diag(corr[:3, 3:]), 0.7, atol=0.01)
    # cross pairs are independent
    assert abs(corr[0, 4]) < 0.02 and abs(corr[1, 2]) < 0.02


@pytest.mark.parametrize("dim,rho", CASES)
def test_mine_matches_analytic_mi(dim, rho):
    x, y = correlated_gaussians(N, dim, rho, seed=dim * 10 + int(rho * 10))
    true = gaussian_mi(rho, dim)
    result = mine(x, y, steps=400, hidden=64, lr=1e-3, seed=0, device="cpu")
    assert abs(result.mi - true) < tolerance(true), (result.mi, true)
    assert len(result.train_history) == 8


@pytest.mark.parametrize("dim,rho", [(1, 0.3), (2, 0.6), (2, 0.9), (4, 0.6)])
def test_ksg_matches_analytic_mi(dim, rho):
    x, y = correlated_gaussians(N, dim, rho, seed=7)
    true = gaussian_mi(rho, dim)
    assert abs(ksg(x, y, k=3) - true) < tolerance(true)


@pytest.mark.parametrize("dim,rho", [(2, 0.5), (2, 0.9), (4, 0.8)])
def test_infonce_matches_analytic_mi(dim, rho):
    x, y = correlated_gaussians(N, dim, rho, seed=11)
    true = gaussian_mi(rho, dim)
    result = infonce(x, y, steps=300, hidden=64, batch_size=128, device="cpu")
    assert abs(result.mi - true) < tolerance(true)
    assert result.mi < math.log(128)  # the InfoNCE ceiling


def test_estimators_agree_and_increase_with_rho():
    values = {"mine": [], "ksg": []}
    for rho in (0.2, 0.5, 0.8):
        x, y = correlated_gaussians(3000, 2, rho, seed=5)
        values["mine"].append(
            estimate_mi(x, y, "mine", steps=300, hidden=64, device="cpu")
        )
        values["ksg"].append(estimate_mi(x, y, "ksg"))
    for name, vals in values.items():
        assert vals == sorted(vals), (name, vals)
    np.testing.assert_allclose(values["mine"], values["ksg"], atol=0.15)


def test_independent_variables_give_about_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 3))
    y = rng.standard_normal((N, 2))
    assert abs(ksg(x, y)) < 0.03
    assert abs(mine(x, y, steps=300, hidden=64, device="cpu").mi) < 0.05


def test_mine_is_deterministic_with_seed():
    x, y = correlated_gaussians(1000, 2, 0.6, seed=0)
    a = mine(x, y, steps=50, hidden=16, seed=3, device="cpu").mi
    b = mine(x, y, steps=50, hidden=16, seed=3, device="cpu").mi
    c = mine(x, y, steps=50, hidden=16, seed=4, device="cpu").mi
    assert a == b
    assert a != c


def test_mi_is_invariant_to_scale_and_shift():
    x, y = correlated_gaussians(2000, 2, 0.7, seed=2)
    x, y = x.astype(np.float64), y.astype(np.float64)
    a = ksg(x, y)
    b = ksg(100.0 * x - 3.0, 0.01 * y + 7.0)
    assert a == pytest.approx(b, abs=1e-9)


def test_discrete_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, N)
    # perfectly separable classes: I = H(label) = log 4
    x = rng.standard_normal((N, 2)) + 20.0 * labels[:, None]
    assert ksg_discrete(x, labels) == pytest.approx(math.log(4), abs=0.03)
    mi = estimate_mi(
        x, labels, "mine", discrete_y=True, steps=300, hidden=64, device="cpu"
    )
    assert mi == pytest.approx(math.log(4), abs=0.15)
    # labels independent of x
    noise = rng.standard_normal((N, 2))
    assert abs(estimate_mi(noise, labels, "ksg", discrete_y=True)) < 0.03


def test_bad_inputs():
    x = np.zeros((100, 2))
    with pytest.raises(ValueError, match="same number of samples"):
        ksg(x, np.zeros((99, 2)))
    with pytest.raises(ValueError, match="NaN"):
        ksg(x + np.nan, x)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        ksg(np.zeros((10, 2, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="at least 8"):
        mine(np.zeros((4, 1)), np.zeros((4, 1)), device="cpu")
    with pytest.raises(ValueError, match="integer labels"):
        estimate_mi(x, np.zeros(100), "ksg", discrete_y=True)
    with pytest.raises(ValueError, match="holdout"):
        mine(x, x, holdout=1.0, device="cpu")
