"""``RunningTopK``: the k largest entries of each row over chunks of columns (exact).

The kernel (snnl.core.kernel) keeps the k largest shifted logits of each query, i.e. its k
nearest reference rows, while it walks the rows chunk by chunk, as faiss' ``ResultHeap`` does.
"""

from __future__ import annotations

import torch


class RunningTopK:
    """The running k largest entries of each row over chunks of columns, unordered, and their
    column ids (exact; equal values in any order, the same for a row in any batch).

    The first chunk is selected with ``torch.topk``; after it a chunk is looked at only for the
    rows whose maximum over it exceeds their current k-th largest value (one cheap max per row
    and chunk), and only those rows' k values and the chunk are selected from again.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None
        self.floor: torch.Tensor | None = None

    def add(self, z: torch.Tensor, start: int) -> None:
        """Merge the columns [start, start + n) of ``z`` (B, n) (not modified)."""
        n = z.shape[1]
        if self.values is None or self.rows is None or self.floor is None:
            values, columns = z.topk(min(self.k, n), dim=1, sorted=False)
            self.values, self.rows = values, columns + start
            self.floor = values.amin(1)
            return
        width = self.values.shape[1]
        if width < self.k:  # fewer than k columns so far: every row takes the chunk
            active = None
        else:
            active = torch.nonzero(z.amax(1) > self.floor)[:, 0]
            if active.numel() == 0:
                return
        held_values = self.values if active is None else self.values[active]
        held_rows = self.rows if active is None else self.rows[active]
        new = z if active is None else z[active]
        columns = torch.arange(start, start + n, device=z.device).expand(new.shape[0], n)
        values, pick = torch.cat([held_values, new], 1).topk(
            min(self.k, width + n), 1, sorted=False
        )
        rows = torch.cat([held_rows, columns], 1).gather(1, pick)
        if active is None:
            self.values, self.rows, self.floor = values, rows, values.amin(1)
            return
        self.values[active] = values
        self.rows[active] = rows
        self.floor[active] = values.amin(1)
