"""Evaluation helpers: top-k hits and the metric names they are logged under."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """Per k, the number of examples whose target is among the k largest logits."""
    top = logits.topk(max(ks), dim=1).indices
    hits = top == targets[:, None]
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])


def metric_name(k: int, split: str = "test") -> str:
    """``<split>_acc`` for top-1, ``<split>_top<k>`` otherwise (``split``: test or val)."""
    return f"{split}_acc" if k == 1 else f"{split}_top{k}"
