"""Gathered metric states shared by the kinds of measurement (torchmetrics ``Metric`` states, so
they gather over DDP processes on ``compute``): per-sample stores, feature moments, counts."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

#: how a metric that could not be computed is reported: ``"missing: <reason>"``
MISSING_PREFIX = "missing: "


class Collect(Metric):
    """Concatenating store for per-sample tensors, gathered over processes on ``compute``."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__(compute_with_cache=False)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, x: Tensor) -> None:
        self.values.append(x.detach())

    def compute(self) -> Tensor:
        if isinstance(self.values, list) and not self.values:
            return torch.empty(0)
        return dim_zero_cat(self.values)  # a list locally, one tensor after a DDP gather


class Moments(Metric):
    """Count, sum and sum of outer products of (N, D) features in float64, summed over
    processes: the sufficient statistics of FID in constant memory."""

    full_state_update = False

    def __init__(self, dim: int) -> None:
        super().__init__(compute_with_cache=False)
        self.add_state("n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, f: Tensor) -> None:
        f = f.detach().to(self.total.device, torch.float64)
        self.n += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def compute(self) -> tuple[int, Tensor, Tensor]:
        """(N, (D,) mean, (D, D) unbiased covariance); mean and covariance need N ≥ 2."""
        n = int(self.n)
        mean = self.total / max(n, 1)
        cov = (self.outer - n * torch.outer(mean, mean)) / max(n - 1, 1)
        return n, mean, cov


class Count(Metric):
    """A number of samples, summed over processes."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__(compute_with_cache=False)
        self.add_state("n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, n: int) -> None:
        self.n += int(n)

    def compute(self) -> int:
        return int(self.n)


def compute_state(metric: Metric) -> Tensor:
    with warnings.catch_warnings():  # "compute called before update" on an empty store
        warnings.simplefilter("ignore")
        return metric.compute()


__all__ = ["MISSING_PREFIX", "Collect", "Count", "Moments", "compute_state"]
