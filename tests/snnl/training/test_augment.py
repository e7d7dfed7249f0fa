"""Random translation of training images."""

from __future__ import annotations

import pytest
import torch

from snnl.training.augment import random_shift


def _offset_of(image: torch.Tensor, shifted: torch.Tensor, shift: int) -> tuple[int, int]:
    """The one (dy, dx) in [-shift, shift]^2 for which ``shifted`` is ``image`` translated."""
    height, width = image.shape[-2:]
    found = []
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            expected = torch.zeros_like(image)
            rows = slice(max(0, -dy), min(height, height - dy))
            cols = slice(max(0, -dx), min(width, width - dx))
            src_rows = slice(rows.start + dy, rows.stop + dy)
            src_cols = slice(cols.start + dx, cols.stop + dx)
            expected[..., rows, cols] = image[..., src_rows, src_cols]
            if torch.equal(expected, shifted):
                found.append((dy, dx))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("shape", [(400, 6, 7), (400, 3, 6, 7)])
def test_each_image_is_translated_within_the_bound(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape) + 1.0  # no zero pixel: the fill is visible
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    offsets = {_offset_of(x[b], out[b], 2) for b in range(len(x))}
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


def test_zero_shift_is_the_identity_and_a_seed_repeats() -> None:
    x = torch.rand(5, 8, 8)
    assert random_shift(x, 0, torch.Generator()) is x
    a = random_shift(x, 1, torch.Generator().manual_seed(3))
    b = random_shift(x, 1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
