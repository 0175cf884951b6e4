"""Data sets: the embedded digits, users' array files, and binarization.

Every split is a float tensor ``(N, *event_shape)``; image data are ``(N, C, H, W)`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pyro_vae.errors import DataError
from pyro_vae.validation import check_tensor

#: The seed of the fixed train/validation/test split.
SPLIT_SEED = 0


@dataclass
class DataSplits:
    """A data set split three ways. Each split: (N, *event_shape), float32.

    Other real floating dtypes (float64, float16, bfloat16) are converted to float32, the
    dtype of the models' parameters. Complex, sparse and non-float tensors are refused.
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Names of the integer labels (index = label), for legends; ``None`` if unnamed.
    label_names: list[str] | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def head(self, n: int) -> DataSplits:
        """The first ``n`` points of every split (and of its labels): a quick, small run.

        Each split: (min(n, N_split), *event_shape).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"head needs a number of points of at least 1, got {n!r}")
        return DataSplits(
            self.name,
            self.train[:n],
            self.valid[:n],
            self.test[:n],
            labels={split: y[:n] for split, y in self.labels.items()},
            label_names=self.label_names,
        )

    def __post_init__(self) -> None:
        for split in ("train", "valid", "test"):
            x = getattr(self, split)
            if isinstance(x, torch.Tensor):
                setattr(self, split, as_float32(x, f"the {split} split of {self.name!r}"))
            x = check_tensor(getattr(self, split), f"the {split} split of {self.name!r}")
            if x.shape[0] == 0:
                raise DataError(
                    f"the {split} split of {self.name!r} is empty; provide more data points"
                )
            if tuple(x.shape[1:]) != tuple(self.train.shape[1:]):
                raise DataError(
                    f"the {split} split has data-point shape {tuple(x.shape[1:])} but train has "
                    f"{tuple(self.train.shape[1:])}; every split needs the same shape"
                )
            if not torch.isfinite(x).all():
                raise DataError(
                    f"the {split} split of {self.name!r} contains NaN or infinite values; "
                    "clean or impute the data first"
                )


def as_float32(x: torch.Tensor, what: str) -> torch.Tensor:
    """A dense, real float32 tensor of the same values, or a
    [`DataError`][pyro_vae.errors.DataError] saying why not.

    x: (N, *event_shape). Sparse layouts and complex dtypes are refused (converting either silently
    changes what the model sees); other floating dtypes are cast to float32; integer and boolean
    tensors are returned unchanged for [`check_tensor`][pyro_vae.validation.check_tensor] to refuse.
    """
    if x.layout != torch.strided:
        raise DataError(
            f"{what} is a sparse tensor ({x.layout}); pass a dense tensor (x.to_dense())"
        )
    if x.is_complex():
        raise DataError(
            f"{what} is complex ({x.dtype}); pass the real part to model explicitly "
            "(x.real, x.imag or x.abs())"
        )
    if x.is_floating_point() and x.dtype != torch.float32:
        return x.to(torch.float32)
    return x


def split_indices(n: int, fractions: tuple[float, float] = (0.1, 0.1), seed: int = SPLIT_SEED):
    """A fixed permutation of ``range(n)`` cut into train, validation and test indices."""
    if n < 3:
        raise DataError(f"need at least 3 data points to split into train/valid/test, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_valid = max(1, round(fractions[0] * n))
    n_test = max(1, round(fractions[1] * n))
    return perm[n_valid + n_test :], perm[:n_valid], perm[n_valid : n_valid + n_test]
