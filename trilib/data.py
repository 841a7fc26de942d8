"""Real data that ships with a package: scikit-learn's bundled 8x8 digits (no downloads)."""

from __future__ import annotations

import torch

__all__ = ["digits", "tiny_text"]


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


# The opening of Lewis Carroll, "Alice's Adventures in Wonderland" (1865), in the public domain.
_ALICE = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
    "nothing to do: once or twice she had peeped into the book her sister was reading, but it had "
    "no pictures or conversations in it, 'and what is the use of a book,' thought Alice 'without "
    "pictures or conversations?' So she was considering in her own mind (as well as she could, for "
    "the hot day made her feel very sleepy and stupid), whether the pleasure of making a "
    "daisy-chain would be worth the trouble of getting up and picking the daisies, when suddenly a "
    "White Rabbit with pink eyes ran close by her."
)


def tiny_text() -> str:
    """A short public-domain English text (the first paragraph of *Alice's Adventures in
    Wonderland*, 1865) shipped inside the package, for training a character-level model
    without downloads.

    Example:
        >>> import trilib
        >>> trilib.data.tiny_text()[:5]
        'Alice'
    """
    return _ALICE
