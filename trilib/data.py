"""Real data that ships with a package: scikit-learn's bundled 8x8 digits (no downloads)."""

from __future__ import annotations

import torch

__all__ = ["digits"]


def digits(split: str = "train", *, as_sequence: bool = False, dtype: torch.dtype = torch.float32,
           test_fraction: float = 0.25, seed: int = 0):
    """The 1797 scikit-learn digits, pixels scaled to [0, 1], split reproducibly.

    Args:
        split: ``"train"`` or ``"test"``.
        as_sequence: return ``x`` as ``(batch, 64, 1)``, the image read pixel by pixel
            (tau = 64), for recurrent networks; otherwise ``(batch, 64)``.
        test_fraction: share of the samples held out for ``"test"``.
        seed: the seed of the shuffle that splits the data.

    Returns:
        ``(x, y)``: inputs of ``dtype`` and integer class labels 0..9.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = load_digits()
    x = torch.tensor(data.data, dtype=dtype) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    idx = order[:n_test] if split == "test" else order[n_test:]
    x, y = x[idx], y[idx]
    return (x.unsqueeze(-1) if as_sequence else x), y
