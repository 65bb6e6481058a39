"""Mutual-information estimators for paired samples ``(x_i, y_i)``.

Three independent estimators, all in nats:

- :func:`mine` -- MINE (Belghazi et al., 2018): a statistics network
  ``T(x, y)`` maximises the Donsker-Varadhan lower bound
  ``E_P[T] - log E_{P_X x P_Y}[exp T]``. The gradient of the log term is
  biased with mini-batches; MINE's correction divides by a moving average
  of ``E[exp T]`` instead of the batch mean. The bound is then evaluated on
  held-out samples.
- :func:`infonce` -- the InfoNCE (contrastive) lower bound with a
  concatenation critic. It cannot exceed ``log(batch_size)``.
- :func:`ksg` -- the Kraskov-Stoegbauer-Grassberger k-nearest-neighbour
  estimator (algorithm 1). It needs no training and is accurate in low
  dimensions; in high dimensions it underestimates.
- :func:`ksg_discrete` -- Ross' (2014) nearest-neighbour estimator for a
  continuous ``x`` and a discrete ``y`` (class labels).

All take ``x`` ``[N, Dx]`` and ``y`` ``[N, Dy]`` (NumPy arrays or tensors),
standardise each feature, and are deterministic for a given ``seed``.
For jointly Gaussian ``x, y`` whose ``d`` coordinate pairs have correlation
``rho``, the true value is :func:`gaussian_mi` ``= -d/2 log(1 - rho^2)``.

Author
------
speechbrain-mamba developers
"""

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Names accepted by :func:`estimate_mi`.
ESTIMATORS = ("mine", "infonce", "ksg")


def gaussian_mi(rho: float, dim: int) -> float:
    """Analytic MI of ``dim`` independent pairs of correlated Gaussians.

    Arguments
    ---------
    rho : float
        Correlation of each pair, in (-1, 1).
    dim : int
        Number of pairs (dimension of x and of y).

    Returns
    -------
    float
        ``-dim / 2 * log(1 - rho^2)`` nats.

    Example
    -------
    >>> round(gaussian_mi(0.8, 2), 4)
    1.0217
    """
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must be in (-1, 1), got {rho}")
    return -dim / 2.0 * math.log(1.0 - rho**2)


def correlated_gaussians(
    n: int, dim: int, rho: float, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Samples ``n`` pairs ``(x, y)`` of ``dim``-dimensional standard
    Gaussians with ``corr(x_k, y_k) = rho`` (other pairs independent).

    Arguments
    ---------
    n : int
        Number of samples.
    dim : int
        Dimension of x and y.
    rho : float
        Correlation per coordinate.
    seed : int
        Seed of the NumPy generator.

    Returns
    -------
    x, y : numpy.ndarray
        ``[n, dim]`` float32 each.

    Example
    -------
    >>> x, y = correlated_gaussians(20000, 1, 0.5)
    >>> round(float(np.corrcoef(x[:, 0], y[:, 0])[0, 1]), 1)
    0.5
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    noise = rng.standard_normal((n, dim))
    y = rho * x + math.sqrt(1.0 - rho**2) * noise
    return x.astype(np.float32), y.astype(np.float32)


def _as_2d_numpy(a: ArrayLike, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _check_pair(x: ArrayLike, y: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    x = _as_2d_numpy(x, "x")
    y = _as_2d_numpy(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples, got "
            f"{x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] < 8:
        raise ValueError(f"need at least 8 samples, got {x.shape[0]}")
    return x, y


def standardize(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns become 0).

    Arguments
    ---------
    a : numpy.ndarray
        ``[N, D]``.

    Returns
    -------
    numpy.ndarray
        Standardised copy.

    Example
    -------
    >>> standardize(np.array([[1.0, 5.0], [3.0, 5.0]]))
    array([[-1.,  0.],
           [ 1.,  0.]])
    """
    std = a.std(axis=0)
    std[std < 1e-12] = 1.0
    return (a - a.mean(axis=0)) / std


# ---------------------------------------------------------------------------
# Neural estimators
# ---------------------------------------------------------------------------
class ConcatCritic(nn.Module):
    """Statistics network ``T(x, y) = MLP([x, y])``.

    Arguments
    ---------
    x_dim, y_dim : int
        Input dimensions.
    hidden : int
        Width of the hidden layers.
    layers : int
        Number of hidden layers.

    Example
    -------
    >>> critic = ConcatCritic(3, 2, hidden=8)
    >>> critic(torch.zeros(5, 3), torch.zeros(5, 2)).shape
    torch.Size([5])
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 128, layers=2):
        super().__init__()
        self.net = _mlp(x_dim + y_dim, hidden, layers, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores pairs ``(x_i, y_i)``; returns ``[N]``."""
        return self.net(torch.cat([x, y], dim=-1)).squeeze(-1)


def _mlp(
    size_in: int, hidden: int, layers: int, size_out: int
) -> nn.Sequential:
    blocks: List[nn.Module] = []
    size = size_in
    for _ in range(layers):
        blocks += [nn.Linear(size, hidden), nn.ReLU()]
        size = hidden
    blocks.append(nn.Linear(size, size_out))
    return nn.Sequential(*blocks)


class SeparableCritic(nn.Module):
    """Critic ``f(x, y) = g(x) . h(y)`` for contrastive bounds: scoring all
    pairs of a batch costs one matrix product.

    Arguments
    ---------
    x_dim, y_dim : int
        Input dimensions.
    hidden : int
        Width of the hidden layers of g and h.
    layers : int
        Number of hidden layers of g and h.
    embedding : int
        Output size of g and h.

    Example
    -------
    >>> critic = SeparableCritic(3, 2, hidden=8, embedding=4)
    >>> critic.pairwise(torch.zeros(5, 3), torch.zeros(5, 2)).shape
    torch.Size([5, 5])
    """

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        hidden: int = 128,
        layers: int = 2,
        embedding: int = 32,
    ):
        super().__init__()
        self.g = _mlp(x_dim, hidden, layers, embedding)
        self.h = _mlp(y_dim, hidden, layers, embedding)

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores all pairs ``(x_i, y_j)``; returns ``[N, N]``."""
        return self.g(x) @ self.h(y).t()


@dataclass
class NeuralMIResult:
    """Result of a neural estimator.

    Arguments
    ---------
    mi : float
        The estimate on the evaluation samples, in nats.
    train_history : list of float
        The training-batch bound every ``log_every`` steps.
    """

    mi: float
    train_history: List[float] = field(default_factory=list)


def _device(device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _split(
    n: int, holdout: float, generator: torch.Generator
) -> Tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    n_eval = int(round(holdout * n))
    if n_eval == 0:
        return order, order
    if n - n_eval < 8 or n_eval < 8:
        raise ValueError(
            f"{n} samples are too few for holdout={holdout}: both parts "
            "need at least 8 samples"
        )
    return order[n_eval:], order[:n_eval]


def _log_mean_exp(t: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(t, dim=0) - math.log(t.shape[0])


def _prepare_neural(x, y, seed, device):
    x, y = _check_pair(x, y)
    dev = _device(device)
    xt = torch.as_tensor(standardize(x), dtype=torch.float32, device=dev)
    yt = torch.as_tensor(standardize(y), dtype=torch.float32, device=dev)
    gen = torch.Generator().manual_seed(int(seed))
    return xt, yt, gen, dev


def _make_critic(cls, x_dim, y_dim, hidden, layers, seed, dev) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        critic = cls(x_dim, y_dim, hidden, layers)
    return critic.to(dev)


def _dv_bound(critic, x, y, gen, chunk=8192, shuffles=4) -> float:
    """Donsker-Varadhan bound on (x, y) with ``shuffles`` permutations of
    y as samples of the product of marginals."""
    n = x.shape[0]
    with torch.no_grad():
        joint = torch.cat(
            [
                critic(x[i : i + chunk], y[i : i + chunk])
                for i in range(0, n, chunk)
            ]
        )
        marg = []
        for _ in range(shuffles):
            perm = torch.randperm(n, generator=gen).to(x.device)
            ys = y[perm]
            marg.append(
                torch.cat(
                    [
                        critic(x[i : i + chunk], ys[i : i + chunk])
                        for i in range(0, n, chunk)
                    ]
                )
            )
        marg = torch.cat(marg).double()
        return float(joint.double().mean() - _log_mean_exp(marg))


class _NeuralEstimator:
    """Training loop shared by the neural estimators.

    The constructor standardises the samples, splits off the held-out part,
    builds the seeded critic and its Adam optimiser. :meth:`run` then takes
    ``steps`` optimiser steps, each on a batch drawn from the training part
    by :meth:`objective`, logs the training bound every ``log_every`` steps,
    calls :meth:`after_step` after each step and returns :meth:`estimate`.
    All randomness after the critic's initialisation comes from one
    generator seeded with ``seed``. Subclasses define the bound.

    Arguments
    ---------
    x, y : numpy.ndarray or torch.Tensor
        Paired samples, ``[N, Dx]`` and ``[N, Dy]``.
    critic_class : type
        :class:`ConcatCritic` or :class:`SeparableCritic`.
    steps, batch_size, lr, hidden, layers, holdout, seed, device, log_every
        As in :func:`mine` (``log_every`` 0 keeps no history); the batch
        size is capped at the number of training samples.

    Example
    -------
    >>> x, y = correlated_gaussians(64, 1, 0.5)
    >>> est = _InfoNCEEstimator(x, y, steps=3, batch_size=16, lr=1e-3,
    ...                         hidden=8, layers=1, holdout=0.25, seed=0,
    ...                         device="cpu", log_every=1)
    >>> est.batch_size, len(est.run().train_history)
    (16, 3)
    """

    def __init__(
        self,
        x: ArrayLike,
        y: ArrayLike,
        critic_class: type,
        *,
        steps: int,
        batch_size: int,
        lr: float,
        hidden: int,
        layers: int,
        holdout: float,
        seed: int,
        device: Optional[Union[str, torch.device]],
        log_every: int,
    ):
        self.xt, self.yt, self.gen, self.dev = _prepare_neural(
            x, y, seed, device
        )
        self.train_idx, self.eval_idx = _split(
            self.xt.shape[0], holdout, self.gen
        )
        self.critic = _make_critic(
            critic_class,
            self.xt.shape[1],
            self.yt.shape[1],
            hidden,
            layers,
            seed,
            self.dev,
        )
        self.opt = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.n_train = self.train_idx.shape[0]
        self.batch_size = min(batch_size, self.n_train)
        self.steps = steps
        self.log_every = log_every

    def objective(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draws a training batch; returns the loss to minimise and the
        bound to log (a scalar tensor each)."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Runs after the optimiser step ``step`` (nothing by default)."""

    def estimate(self) -> float:
        """The final estimate of I(x; y) in nats."""
        raise NotImplementedError

    def run(self) -> NeuralMIResult:
        """Trains the critic and returns the estimate with the history."""
        history: List[float] = []
        for step in range(self.steps):
            loss, bound = self.objective()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.log_every and step % self.log_every == 0:
                history.append(float(bound.detach()))
            self.after_step(step)
        return NeuralMIResult(self.estimate(), history)


class _MineEstimator(_NeuralEstimator):
    """MINE on the shared loop: bias-corrected Donsker-Varadhan training,
    held-out bound averaged over ``eval_points`` steps of the last fifth
    of training (see :func:`mine` for the arguments).

    Arguments
    ---------
    x, y : numpy.ndarray or torch.Tensor
        Paired samples.
    ma_rate : float
        Rate of the moving average of the gradient correction.
    eval_points : int
        Number of evaluations averaged into the estimate.
    **kwargs
        The keyword arguments of :class:`_NeuralEstimator`.

    Example
    -------
    >>> x, y = correlated_gaussians(64, 1, 0.5)
    >>> est = _MineEstimator(x, y, ma_rate=0.01, eval_points=2, steps=10,
    ...                      batch_size=16, lr=1e-3, hidden=8, layers=1,
    ...                      holdout=0.25, seed=0, device="cpu", log_every=5)
    >>> sorted(est.eval_steps)
    [7, 9]
    """

    def __init__(
        self,
        x: ArrayLike,
        y: ArrayLike,
        ma_rate: float,
        eval_points: int,
        **kwargs,
    ):
        super().__init__(x, y, ConcatCritic, **kwargs)
        steps = self.steps
        if steps < 1 or eval_points < 1:
            raise ValueError("steps and eval_points must be positive")
        self.ma_rate = ma_rate
        self.log_ma: Optional[torch.Tensor] = None
        last = steps - 1
        first_eval = last - (steps // 5)
        self.eval_steps = set(
            np.linspace(
                first_eval, last, min(eval_points, last - first_eval + 1)
            )
            .round()
            .astype(int)
            .tolist()
        )
        self.estimates: List[float] = []

    def objective(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Joint and marginal batches (drawn with replacement); the loss
        has the gradient ``E[dT_joint] - E[exp(T_marg) dT_marg] / MA``."""
        n_train, bs, dev = self.n_train, self.batch_size, self.dev
        joint_idx = self.train_idx[
            torch.randint(n_train, (bs,), generator=self.gen)
        ]
        marg_idx = self.train_idx[
            torch.randint(n_train, (bs,), generator=self.gen)
        ]
        xb = self.xt[joint_idx.to(dev)]
        t_joint = self.critic(xb, self.yt[joint_idx.to(dev)])
        t_marg = self.critic(xb, self.yt[marg_idx.to(dev)])
        batch_log = _log_mean_exp(t_marg).detach()
        if self.log_ma is None:
            self.log_ma = batch_log
        else:
            self.log_ma = torch.logaddexp(
                self.log_ma + math.log(1.0 - self.ma_rate),
                batch_log + math.log(self.ma_rate),
            )
        corrected = torch.exp(t_marg - self.log_ma).mean()
        loss = -(t_joint.mean() - corrected)
        return loss, t_joint.mean().detach() - batch_log

    def after_step(self, step: int) -> None:
        """Evaluates the bound on the held-out samples at the evaluation
        steps."""
        if step in self.eval_steps:
            ev = self.eval_idx.to(self.dev)
            self.estimates.append(
                _dv_bound(self.critic, self.xt[ev], self.yt[ev], self.gen)
            )

    def estimate(self) -> float:
        """Mean of the held-out bounds."""
        return float(np.mean(self.estimates))


class _InfoNCEEstimator(_NeuralEstimator):
    """InfoNCE on the shared loop, with a separable critic; the estimate
    averages the bound over held-out batches (see :func:`infonce`).

    Arguments
    ---------
    x, y : numpy.ndarray or torch.Tensor
        Paired samples.
    **kwargs
        The keyword arguments of :class:`_NeuralEstimator`.

    Example
    -------
    >>> x, y = correlated_gaussians(64, 1, 0.5)
    >>> est = _InfoNCEEstimator(x, y, steps=0, batch_size=16, lr=1e-3,
    ...                         hidden=8, layers=1, holdout=0.25, seed=0,
    ...                         device="cpu", log_every=1)
    >>> est.estimate() < math.log(16)
    True
    """

    def __init__(self, x: ArrayLike, y: ArrayLike, **kwargs):
        super().__init__(x, y, SeparableCritic, **kwargs)

    def bound(self, idx: torch.Tensor) -> torch.Tensor:
        """InfoNCE bound of the batch of samples ``idx``."""
        idx = idx.to(self.dev)
        scores = self.critic.pairwise(self.xt[idx], self.yt[idx])
        log_norm = torch.logsumexp(scores, dim=1) - math.log(idx.shape[0])
        return (scores.diagonal() - log_norm).mean()

    def objective(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """A batch drawn without replacement; the loss is minus the bound."""
        perm = torch.randperm(self.n_train, generator=self.gen)
        value = self.bound(self.train_idx[perm[: self.batch_size]])
        return -value, value

    def estimate(self) -> float:
        """Mean bound over 4 shuffles of the held-out samples, in batches
        of the training batch size (at most the held-out count)."""
        self.critic.eval()
        n_eval = self.eval_idx.shape[0]
        eval_bs = min(self.batch_size, n_eval)
        values = []
        with torch.no_grad():
            for _ in range(4):
                perm = self.eval_idx[torch.randperm(n_eval, generator=self.gen)]
                for start in range(0, n_eval - eval_bs + 1, eval_bs):
                    values.append(
                        float(self.bound(perm[start : start + eval_bs]))
                    )
        return float(np.mean(values))


def mine(
    x: ArrayLike,
    y: ArrayLike,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    hidden: int = 128,
    layers: int = 2,
    ma_rate: float = 0.01,
    holdout: float = 0.25,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    log_every: int = 50,
    eval_points: int = 5,
) -> NeuralMIResult:
    """MINE estimate of I(x; y) in nats.

    The critic is trained on the samples outside the held-out part with
    the bias-corrected gradient (moving average of ``E[exp T]`` with rate
    ``ma_rate``). The Donsker-Varadhan bound is evaluated on the held-out
    samples (on all samples when ``holdout`` is 0) at ``eval_points`` steps
    spread over the last fifth of training, and averaged: the bound of a
    single critic fluctuates from step to step.

    Arguments
    ---------
    x : numpy.ndarray or torch.Tensor
        ``[N, Dx]`` samples.
    y : numpy.ndarray or torch.Tensor
        ``[N, Dy]`` samples paired with x.
    steps : int
        Optimisation steps.
    batch_size : int
        Samples per step (joint and marginal batches).
    lr : float
        Adam learning rate.
    hidden : int
        Hidden width of the statistics network.
    layers : int
        Hidden layers of the statistics network.
    ma_rate : float
        Rate of the moving average of the gradient correction.
    holdout : float
        Fraction of samples kept for evaluation.
    seed : int
        Seed (initialisation, batches, shuffles).
    device : str or torch.device, optional
        Defaults to CUDA when available.
    log_every : int
        Period (steps) of ``train_history``.
    eval_points : int
        Number of evaluations averaged into the estimate.

    Returns
    -------
    NeuralMIResult
        ``mi`` and the training history.

    Example
    -------
    >>> x, y = correlated_gaussians(1000, 1, 0.9, seed=1)
    >>> res = mine(x, y, steps=100, lr=1e-2, hidden=16, device="cpu")
    >>> abs(res.mi - gaussian_mi(0.9, 1)) < 0.2
    True
    """
    return _MineEstimator(
        x,
        y,
        ma_rate=ma_rate,
        eval_points=eval_points,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        hidden=hidden,
        layers=layers,
        holdout=holdout,
        seed=seed,
        device=device,
        log_every=log_every,
    ).run()


def infonce(
    x: ArrayLike,
    y: ArrayLike,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 1e-3,
    hidden: int = 128,
    layers: int = 2,
    holdout: float = 0.25,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    log_every: int = 50,
) -> NeuralMIResult:
    """InfoNCE lower bound of I(x; y) in nats (at most ``log(batch_size)``),
    with a separable critic ``g(x) . h(y)``.

    Arguments
    ---------
    x : numpy.ndarray or torch.Tensor
        ``[N, Dx]`` samples.
    y : numpy.ndarray or torch.Tensor
        ``[N, Dy]`` samples paired with x.
    steps : int
        Optimisation steps.
    batch_size : int
        Pairs per step (each x is contrasted with the batch's y).
    lr : float
        Adam learning rate.
    hidden : int
        Hidden width of the critic.
    layers : int
        Hidden layers of the critic.
    holdout : float
        Fraction of samples kept for evaluation.
    seed : int
        Seed.
    device : str or torch.device, optional
        Defaults to CUDA when available.
    log_every : int
        Period (steps) of ``train_history``.

    Returns
    -------
    NeuralMIResult
        ``mi`` (averaged over held-out batches) and the training history.

    Example
    -------
    >>> x, y = correlated_gaussians(1000, 1, 0.9, seed=1)
    >>> res = infonce(x, y, steps=100, lr=1e-2, hidden=16, device="cpu")
    >>> abs(res.mi - gaussian_mi(0.9, 1)) < 0.2
    True
    """
    return _InfoNCEEstimator(
        x,
        y,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        hidden=hidden,
        layers=layers,
        holdout=holdout,
        seed=seed,
        device=device,
        log_every=log_every,
    ).run()


# ---------------------------------------------------------------------------
# Nearest-neighbour estimators
# ---------------------------------------------------------------------------
def _jitter(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tiny noise that breaks ties between equal samples."""
    return a + 1e-10 * rng.standard_normal(a.shape)


def _count_within(points: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Number of other points strictly closer (max-norm) than ``radius``."""
    from scipy.spatial import cKDTree

    tree = cKDTree(points)
    # Shrink the radius a hair so the k-th neighbour itself is excluded.
    counts = tree.query_ball_point(
        points, radius * (1.0 - 1e-9), p=np.inf, return_length=True
    )
    return np.asarray(counts) - 1


def ksg(x: ArrayLike, y: ArrayLike, k: int = 3, seed: int = 0) -> float:
    """Kraskov-Stoegbauer-Grassberger estimate of I(x; y) in nats
    (algorithm 1, max-norm).

    ``I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >`` where the
    counts are taken within each sample's k-th neighbour distance in the
    joint space.

    Arguments
    ---------
    x : numpy.ndarray or torch.Tensor
        ``[N, Dx]`` samples.
    y : numpy.ndarray or torch.Tensor
        ``[N, Dy]`` samples.
    k : int
        Number of neighbours.
    seed : int
        Seed of the tie-breaking jitter.

    Returns
    -------
    float
        The estimate (may be slightly negative for independent data).

    Example
    -------
    >>> x, y = correlated_gaussians(2000, 2, 0.7, seed=0)
    >>> abs(ksg(x, y) - gaussian_mi(0.7, 2)) < 0.1
    True
    """
    from scipy.spatial import cKDTree
    from scipy.special import digamma

    x, y = _check_pair(x, y)
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, N), got {k}")
    rng = np.random.default_rng(seed)
    x = _jitter(standardize(x), rng)
    y = _jitter(standardize(y), rng)
    joint = np.concatenate([x, y], axis=1)
    dist, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf)
    radius = dist[:, -1]
    n_x = _count_within(x, radius)
    n_y = _count_within(y, radius)
    n = x.shape[0]
    value = (
        digamma(k) + digamma(n) - np.mean(digamma(n_x + 1) + digamma(n_y + 1))
    )
    return float(value)


def ksg_discrete(
    x: ArrayLike, labels: ArrayLike, k: int = 3, seed: int = 0
) -> float:
    """Nearest-neighbour estimate of I(x; label) for continuous x and a
    discrete label (Ross, 2014), in nats.

    For sample i with label c (``N_c`` samples), ``d_i`` is the distance to
    its k-th neighbour among the samples of class c and ``m_i`` counts all
    samples closer than ``d_i`` (itself included); then
    ``I = psi(N) - <psi(N_c)> + psi(k) - <psi(m_i)>``. Classes with at most
    k samples are left out.

    Arguments
    ---------
    x : numpy.ndarray or torch.Tensor
        ``[N, D]`` samples.
    labels : numpy.ndarray or torch.Tensor
        ``[N]`` integer labels.
    k : int
        Number of neighbours.
    seed : int
        Seed of the tie-breaking jitter.

    Returns
    -------
    float
        The estimate.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> lab = rng.integers(0, 2, 4000)
    >>> x = rng.standard_normal((4000, 1)) + 20.0 * lab[:, None]
    >>> abs(ksg_discrete(x, lab) - math.log(2)) < 0.05
    True
    """
    from scipy.spatial import cKDTree
    from scipy.special import digamma

    x = _as_2d_numpy(x, "x")
    labels = np.asarray(
        labels.detach().cpu().numpy()
        if isinstance(labels, torch.Tensor)
        else labels
    ).reshape(-1)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} samples but labels has {labels.shape[0]}"
        )
    rng = np.random.default_rng(seed)
    x = _jitter(standardize(x), rng)
    keep = np.zeros(len(labels), dtype=bool)
    radius = np.zeros(len(labels))
    class_size = np.zeros(len(labels))
    for value in np.unique(labels):
        members = np.nonzero(labels == value)[0]
        if len(members) <= k:
            continue
        pts = x[members]
        dist, _ = cKDTree(pts).query(pts, k=k + 1, p=np.inf)
        radius[members] = dist[:, -1]
        class_size[members] = len(members)
        keep[members] = True
    if keep.sum() < 2:
        raise ValueError(f"no label has more than k={k} samples")
    x, radius, class_size = x[keep], radius[keep], class_size[keep]
    # Samples strictly within the radius, the sample itself included.
    m = _count_within(x, radius) + 1
    value = (
        digamma(x.shape[0])
        - np.mean(digamma(class_size))
        + digamma(k)
        - np.mean(digamma(m))
    )
    return float(value)


def estimate_mi(
    x: ArrayLike,
    y: ArrayLike,
    estimator: str = "mine",
    discrete_y: bool = False,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    **kwargs,
) -> float:
    """One entry point for the estimators of this module.

    Arguments
    ---------
    x : numpy.ndarray or torch.Tensor
        ``[N, Dx]`` samples.
    y : numpy.ndarray or torch.Tensor
        ``[N, Dy]`` samples, or ``[N]`` integer labels with ``discrete_y``.
    estimator : str
        ``"mine"``, ``"infonce"`` or ``"ksg"``.
    discrete_y : bool
        y holds class labels: one-hot encoded for the neural estimators,
        :func:`ksg_discrete` for ``"ksg"``.
    seed : int
        Seed.
    device : str or torch.device, optional
        Device of the neural estimators.
    **kwargs
        Passed to the estimator (``steps``, ``batch_size``, ``k`` ...).

    Returns
    -------
    float
        The estimate in nats.

    Example
    -------
    >>> x, y = correlated_gaussians(1000, 1, 0.5)
    >>> estimate_mi(x, y, "nope")
    Traceback (most recent call last):
    ...
    ValueError: estimator must be one of ('mine', 'infonce', 'ksg'), got 'nope'
    """
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"estimator must be one of {ESTIMATORS}, got {estimator!r}"
        )
    if discrete_y:
        labels = np.asarray(
            y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y
        ).reshape(-1)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"discrete_y needs integer labels, got dtype {labels.dtype}"
            )
        if estimator == "ksg":
            return ksg_discrete(x, labels, seed=seed, **kwargs)
        _, inverse = np.unique(labels, return_inverse=True)
        y = np.eye(inverse.max() + 1, dtype=np.float32)[inverse]
    if estimator == "ksg":
        return ksg(x, y, seed=seed, **kwargs)
    fn = mine if estimator == "mine" else infonce
    return fn(x, y, seed=seed, device=device, **kwargs).mi
