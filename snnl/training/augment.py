"""Random translation of training images (``TrainSettings.random_shift``).

Written here rather than taken from torchvision: the transform is one gather, and torchvision
would be a further dependency whose wheel must match the pinned torch build.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` (B, H, W) or (B, C, H, W) by its own integer offsets
    (dy, dx), each uniform on [-shift, shift]: out[b, ..., i, j] = x[b, ..., i + dy, j + dx],
    0 where (i + dy, j + dx) falls outside the image. ``shift`` 0 returns ``x`` itself."""
    if shift == 0:
        return x
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    padded = F.pad(x, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (2, batch), generator=generator)
    rows = offsets[0][:, None] + torch.arange(height)  # (B, H) rows of the padded image
    cols = offsets[1][:, None] + torch.arange(width)  # (B, W)
    flat = padded.reshape(batch, -1, *padded.shape[-2:])  # (B, C, H + 2s, W + 2s)
    out = flat[
        torch.arange(batch)[:, None, None, None],
        torch.arange(flat.shape[1])[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return out.reshape(x.shape)
