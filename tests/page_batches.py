"""Random page-shaped Stage 3 batches for the model and objective tests."""

from __future__ import annotations

import torch

LENGTH = 6  # tokens per panel text


def page_batch(counts: tuple[int, ...] = (4, 2), panels: int = 4, size: int = 32) -> dict:
    """Random page-shaped batch of len(counts) pages; page b has counts[b] panels, the first page's last panel has no
    text; images are size x size."""
    pages = len(counts)
    panel_mask = torch.arange(panels)[None, :] < torch.tensor(counts)[:, None]  # (B, N)
    modality_mask = panel_mask[..., None].expand(-1, -1, 3).float().clone()
    modality_mask[0, counts[0] - 1, 1] = 0
    return dict(
        images=torch.rand(pages, panels, 3, size, size),
        input_ids=torch.randint(1000, 3000, (pages, panels, LENGTH)),
        attention_mask=torch.ones(pages, panels, LENGTH, dtype=torch.long),
        comp_feats=torch.rand(pages, panels, 7),
        modality_mask=modality_mask,
        panel_mask=panel_mask.float(),
    )
