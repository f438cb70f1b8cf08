"""Real datasets bundled with scikit-learn (nothing is downloaded at run time), as tensors.

Features are standardized with the training split's mean and standard deviation; the split is
stratified and seeded, so every run sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NAMES = ("digits", "iris", "breast_cancer")


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1


def load(name: str, dtype: torch.dtype = torch.float32, test_fraction: float = 0.25,
         seed: int = 0) -> Dataset:
    """Load ``digits`` (1797 8×8 images, 10 classes), ``iris`` or ``breast_cancer``."""
    if name not in NAMES:
        raise ValueError(f"dataset must be one of {list(NAMES)}, got {name!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn import datasets as skd
    from sklearn.model_selection import train_test_split

    bunch = getattr(skd, f"load_{name}")()
    x_tr, x_te, y_tr, y_te = train_test_split(bunch.data, bunch.target, test_size=test_fraction,
                                              random_state=seed, stratify=bunch.target)
    x_tr = torch.as_tensor(x_tr, dtype=torch.float64)
    x_te = torch.as_tensor(x_te, dtype=torch.float64)
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-8)
    return Dataset(name, ((x_tr - mean) / std).to(dtype), torch.as_tensor(y_tr),
                   ((x_te - mean) / std).to(dtype), torch.as_tensor(y_te))
