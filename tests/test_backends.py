"""The cpu backend's options and the backend interface in one process: torch.compile,
channels_last, the sampler's per-process slices, the check_finite default."""

import pytest
import torch
from test_trainer import recipe

from neural_alignment.core.errors import UserError
from neural_alignment.training.batches import StepBatches, process_share
from neural_alignment.training.trainer import Trainer

CONV = ["model.arch=convnet", "model.options={channels: [4]}", "train.steps=3", "rule.name=kp"]


def trained(tmp_path, name, *overrides):
    trainer = Trainer(recipe(*CONV, *overrides), tmp_path / name)
    return trainer, trainer.run().model.state_dict()


def test_compile_and_channels_last_train_like_eager(tmp_path):
    """`compile` (here torch.compile's aot_eager backend: `true` takes inductor, minutes to build on
    2 loaded cores) and `channels_last` change how the step runs, not what it computes."""
    _, eager = trained(tmp_path, "eager")
    compiled, state = trained(tmp_path, "compiled", "backend.options={compile: aot_eager, channels_last: true}")
    assert isinstance(compiled.net, torch._dynamo.eval_frame.OptimizedModule)
    conv = compiled.model.features.block1.conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for name, value in state.items():
        assert torch.allclose(value, eager[name], atol=1e-5, rtol=1e-4), name


def test_step_batches_split_each_global_batch_among_processes():
    """Process r of w takes part r of every global batch: together they are the one-process batches."""
    single = list(StepBatches(100, 8, seed=3, start=2, total=30))
    parts = [list(StepBatches(100, 8, seed=3, start=2, total=30, rank=r, world_size=4)) for r in range(4)]
    for step, batch in enumerate(single):
        assert [index for p in parts for index in p[step]] == batch
    with pytest.raises(ValueError, match="not divisible"):
        StepBatches(100, 6, seed=0, start=0, total=1, world_size=4)
    shares = [list(process_share(range(10), r, 3)) for r in range(3)]
    assert sorted(index for share in shares for index in share) == list(range(10)) and shares[1] == [1, 4, 7]


def test_check_finite_every_defaults_to_the_backend_choice(tmp_path):
    assert Trainer(recipe("train.steps=1"), tmp_path / "a").check_every == 1  # cpu: every step
    assert Trainer(recipe("train.steps=1", "train.check_finite_every=7"), tmp_path / "b").check_every == 7


def test_backend_option_mistakes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"unknown option 'channel_last'.*channels_last"):
        Trainer(recipe("backend.options={channel_last: true}"), tmp_path / "a")
    with pytest.raises(UserError, match="backend 'xla' needs torch-xla"):
        Trainer(recipe("backend.name=xla"), tmp_path / "b")
