"""k-means clustering in PyTorch (CPU or GPU) for HuBERT targets.

:class:`KMeans` standardises the features (optional), initialises the
centroids with k-means++ on a sample, then runs mini-batch k-means
(Sculley, 2010: per-centroid learning rates ``1 / count``) followed by a
few full Lloyd iterations. Distances are computed in chunks, so millions of
frames fit in memory. Results are deterministic for a given seed and
device. The fitted model saves to and loads from a single ``.pt`` file
(written atomically).

Author
------
speechbrain-mamba developers
"""

from pathlib import Path
from typing import Optional

import torch

from speechbrain_mamba.utils.atomic import atomic_target
from speechbrain_mamba.utils.io import PathLike


def _sq_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` squared Euclidean distances."""
    return (
        (x * x).sum(1, keepdim=True)
        - 2.0 * x @ centroids.t()
        + (centroids * centroids).sum(1)[None, :]
    ).clamp_min(0.0)


class KMeans:
    """Mini-batch k-means with k-means++ initialisation.

    Arguments
    ---------
    n_clusters : int
        Number of clusters.
    batch_size : int
        Samples per mini-batch update.
    max_iter : int
        Mini-batch updates.
    lloyd_iter : int
        Full Lloyd iterations after the mini-batch phase.
    init_size : int
        Samples used for the k-means++ initialisation.
    standardize : bool
        Scale every feature to zero mean and unit variance first.
    seed : int
        Seed of the initialisation and the batches.
    device : str, optional
        Defaults to CUDA when available.
    chunk_size : int
        Rows per distance computation.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    >>> x = centers.repeat(100, 1) + 0.1 * torch.randn(300, 2, generator=g)
    >>> km = KMeans(3, device="cpu", standardize=False).fit(x)
    >>> labels = km.predict(centers)
    >>> len(set(labels.tolist()))
    3
    >>> bool((km.predict(x) == labels.repeat(100)).all())
    True
    """

    def __init__(
        self,
        n_clusters: int,
        batch_size: int = 10000,
        max_iter: int = 100,
        lloyd_iter: int = 10,
        init_size: int = 20000,
        standardize: bool = True,
        seed: int = 0,
        device: Optional[str] = None,
        chunk_size: int = 65536,
    ):
        if n_clusters < 2:
            raise ValueError(f"n_clusters must be >= 2, got {n_clusters}")
        self.n_clusters = int(n_clusters)
        self.batch_size = int(batch_size)
        self.max_iter = int(max_iter)
        self.lloyd_iter = int(lloyd_iter)
        self.init_size = int(init_size)
        self.standardize = bool(standardize)
        self.seed = int(seed)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.chunk_size = int(chunk_size)
        self.centroids: Optional[torch.Tensor] = None
        self.mean: Optional[torch.Tensor] = None
        self.std: Optional[torch.Tensor] = None
        self.inertia: Optional[float] = None

    # ------------------------------------------------------------------
    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).to(self.device, torch.float32)
        if x.dim() != 2:
            raise ValueError(f"features must be [N, D], got {tuple(x.shape)}")
        if self.centroids is not None and x.shape[1] != self.centroids.shape[1]:
            raise ValueError(
                f"features have {x.shape[1]} dimensions but the k-means model "
                f"was fitted on {self.centroids.shape[1]}"
            )
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def _assign(self, x: torch.Tensor):
        labels, dists = [], []
        for start in range(0, x.shape[0], self.chunk_size):
            d = _sq_distances(
                x[start : start + self.chunk_size], self.centroids
            )
            value, index = d.min(dim=1)
            labels.append(index)
            dists.append(value)
        return torch.cat(labels), torch.cat(dists)

    def _init_plus_plus(self, x: torch.Tensor, gen: torch.Generator):
        n = x.shape[0]
        sample = x[
            torch.randperm(n, generator=gen)[: self.init_size].to(x.device)
        ]
        first = int(torch.randint(sample.shape[0], (1,), generator=gen))
        centroids = [sample[first]]
        closest = _sq_distances(sample, sample[first : first + 1])[:, 0]
        for _ in range(1, self.n_clusters):
            total = closest.sum()
            if float(total) <= 0.0:  # fewer distinct points than clusters
                probs = torch.ones_like(closest)
            else:
                probs = closest / total
            index = int(torch.multinomial(probs.cpu(), 1, generator=gen))
            centroids.append(sample[index])
            new = _sq_distances(sample, sample[index : index + 1])[:, 0]
            closest = torch.minimum(closest, new)
        return torch.stack(centroids)

    def fit(self, features: torch.Tensor) -> "KMeans":
        """Clusters ``[N, D]`` features.

        Arguments
        ---------
        features : torch.Tensor
            The samples (at least ``n_clusters``).

        Returns
        -------
        KMeans
            self, with ``centroids`` and ``inertia`` (mean squared
            distance to the closest centroid, in the standardised space).
        """
        x = torch.as_tensor(features).to(self.device, torch.float32)
        if x.dim() != 2:
            raise ValueError(f"features must be [N, D], got {tuple(x.shape)}")
        if x.shape[0] < self.n_clusters:
            raise ValueError(
                f"need at least n_clusters={self.n_clusters} samples, got "
                f"{x.shape[0]}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values")
        self.mean, self.std = None, None
        if self.standardize:
            self.mean = x.mean(0)
            self.std = x.std(0).clamp_min(1e-8)
            x = (x - self.mean) / self.std
        gen = torch.Generator().manual_seed(self.seed)
        self.centroids = self._init_plus_plus(x, gen)
        counts = torch.zeros(self.n_clusters, device=x.device)
        n = x.shape[0]
        for _ in range(self.max_iter):
            idx = torch.randint(n, (min(self.batch_size, n),), generator=gen)
            batch = x[idx.to(x.device)]
            labels, _ = self._assign(batch)
            sums = torch.zeros_like(self.centroids).index_add_(0, labels, batch)
            hits = torch.bincount(labels, minlength=self.n_clusters).float()
            counts += hits
            rate = (hits / counts.clamp_min(1.0))[:, None]
            means = sums / hits.clamp_min(1.0)[:, None]
            self.centroids = torch.where(
                hits[:, None] > 0,
                (1.0 - rate) * self.centroids + rate * means,
                self.centroids,
            )
        for _ in range(self.lloyd_iter):
            labels, _ = self._assign(x)
            sums = torch.zeros_like(self.centroids).index_add_(0, labels, x)
            hits = torch.bincount(labels, minlength=self.n_clusters).float()
            self.centroids = torch.where(
                hits[:, None] > 0,
                sums / hits.clamp_min(1.0)[:, None],
                self.centroids,
            )
        _, dists = self._assign(x)
        self.inertia = float(dists.mean())
        return self

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Closest centroid of each row.

        Arguments
        ---------
        features : torch.Tensor
            ``[N, D]``.

        Returns
        -------
        torch.Tensor
            ``[N]`` long labels, on the CPU.
        """
        if self.centroids is None:
            raise RuntimeError("KMeans.predict called before fit / load")
        x = self._transform(features)
        labels, _ = self._assign(x)
        return labels.cpu()

    # ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to predict."""
        if self.centroids is None:
            raise RuntimeError("the k-means model is not fitted")
        return {
            "n_clusters": self.n_clusters,
            "centroids": self.centroids.cpu(),
            "mean": None if self.mean is None else self.mean.cpu(),
            "std": None if self.std is None else self.std.cpu(),
            "inertia": self.inertia,
            "seed": self.seed,
        }

    def save(self, path: PathLike) -> Path:
        """Writes the fitted model to ``path`` (atomically).

        Arguments
        ---------
        path : str or os.PathLike
            Destination ``.pt`` file.

        Returns
        -------
        pathlib.Path
        """
        path = Path(path)
        with atomic_target(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return path

    @classmethod
    def load(cls, path: PathLike, device: Optional[str] = None) -> "KMeans":
        """Loads a model written by :meth:`save`.

        Arguments
        ---------
        path : str or os.PathLike
            The ``.pt`` file.
        device : str, optional
            Device for prediction.

        Returns
        -------
        KMeans
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"k-means model not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        km = cls(state["n_clusters"], seed=state.get("seed", 0), device=device)
        km.centroids = state["centroids"].to(km.device)
        km.mean = None if state["mean"] is None else state["mean"].to(km.device)
        km.std = None if state["std"] is None else state["std"].to(km.device)
        km.standardize = km.mean is not None
        km.inertia = state.get("inertia")
        return km
