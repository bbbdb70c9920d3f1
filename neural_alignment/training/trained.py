"""A trained model read back from its run folder (``recipe.yaml`` + ``checkpoint.pt``)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import load_resolved_recipe
from neural_alignment.runtime import checkpoint
from neural_alignment.training.build import build_data, build_model
from neural_alignment.training.rundir import CHECKPOINT, RECIPE


def load_trained_model(run_dir: str | Path) -> nn.Module:
    """The run's model (its recipe's architecture and rule, dtype ``train.dtype``) with the
    checkpoint's weights (the previous checkpoint, with a notice, when the latest is damaged), on the
    CPU, in eval mode. The dataset is built for its shapes."""
    run_dir = Path(run_dir)
    missing = [name for name in (RECIPE, CHECKPOINT) if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a trained run folder: no {' or '.join(missing)}")
    recipe = load_resolved_recipe(run_dir / RECIPE)  # as the run had it: no base chain or by_rule applied again
    model = build_model(recipe, build_data(recipe)).to(getattr(torch, recipe.train.dtype))
    state, notice = checkpoint.load_good(run_dir / CHECKPOINT, map_location="cpu")
    if notice:
        print(f"nalign: notice: {notice}", file=sys.stderr)
    model.load_state_dict(state["model"])
    return model.eval()
