"""The trainer on tiny digits/synthetic runs: schedules, delay, alternation, accumulation, resume, NaN stop."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny_runs import SGD_MOMENTUM, TINY_MLP

from neural_alignment.api import alignment_loss
from neural_alignment.cli import main
from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.runtime import checkpoint
from neural_alignment.training.build import backward_weights, forward_weights
from neural_alignment.training.divergence import TrainingDiverged
from neural_alignment.training.evaluation import topk_correct
from neural_alignment.training.trainer import Trainer, train

TINY = [*TINY_MLP, *SGD_MOMENTUM, "data.train_limit=256", "data.test_limit=100"]


def recipe(*overrides):
    return load_recipe("digits-mlp", [*TINY, *overrides])


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshots(trainer, step, store):
    store[step] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def parameters_after_each_step(run_dir, *overrides):
    """Train ``recipe(*overrides)``; returns ({step: parameters after it}, the backward weights' names)."""
    store = {}
    trainer = Trainer(recipe(*overrides), run_dir, on_step=lambda t, s: snapshots(t, s, store))
    snapshots(trainer, 0, store)
    backward = {n for n, _ in trainer.model.named_parameters() if n.endswith("backward_weight")}
    trainer.run()
    return store, backward


def moved(before, after):
    return {n for n in after if not torch.equal(before[n], after[n])}


def test_run_folder_checkpoint_and_logged_lrs(tmp_path):
    schedule = "{kind: step, warmup_epochs: 1, drops: [2], factor: 0.1}"
    r = recipe(
        "rule.name=sa",
        "train.steps=24",
        f"optim.task.schedule={schedule}",
        "optim.task.rescale_lr=true",
        "optim.alignment.lr=0.01",
        "train.checkpoint_every=10",
        "train.eval_every=12",
    )
    result = train(r, tmp_path / "run")
    # 256 // 32 = 8 steps per epoch; task lr(s) = 0.05 * 32/256 * warmup(s/8) * 0.1^[s >= 16]
    logged = {rec["step"]: rec for rec in records(tmp_path / "run")}
    assert sorted(logged) == list(range(25))
    initial = logged.pop(0)  # step 0: the initial W and B, before any update
    assert {"angle/1", "norm_ratio/3", "mean_weight_angle"} <= set(initial) and initial["epoch"] == 0
    assert not {"loss", "train_acc", "lr_task", "lr_alignment", "test_acc"} & set(initial)
    for step, rec in logged.items():
        s = step - 1  # the logged lr is the one the step just taken used
        warm = min(s / 8, 1.0)
        assert rec["lr_task"] == pytest.approx(0.05 * 32 / 256 * warm * (0.1 if s >= 16 else 1.0), abs=1e-15)
        assert rec["lr_alignment"] == pytest.approx(0.01)
        assert {"loss", "train_acc", "mean_weight_angle", "angle/1", "norm_ratio/3"} <= set(rec)
    assert {"test_acc", "test_top5", "test_loss"} <= set(logged[12]) and "test_acc" not in logged[11]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 24 and 0 <= summary["test_acc"] <= 1
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["rule"]["name"] == "sa"
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 24 and set(state) >= {"model", "optimizers", "schedules", "rng"}
    assert all(torch.equal(state["model"][k], v) for k, v in result.model.state_dict().items())


def test_delay_trains_only_the_alignment_first(tmp_path):
    store, backward = parameters_after_each_step(
        tmp_path / "run",
        "rule.name=sa",
        "train.steps=12",
        "train.delay_epochs=1",
        "data.train_limit=128",
        "optim.task.schedule={kind: step, warmup_epochs: 1}",
    )
    # 128 // 32 = 4 steps per epoch: steps 0..3 move only B; then W too, with the task warmup shifted by 1 epoch
    for step in range(1, 5):
        assert moved(store[step - 1], store[step]) == backward
    assert moved(store[4], store[5]) == backward  # task lr at epoch 1 - 1 = 0 of the warmup is 0
    assert moved(store[5], store[6]) == set(store[0])


def test_alternating_steps_move_alignment_then_task(tmp_path):
    store, backward = parameters_after_each_step(
        tmp_path / "run", "rule.name=sa", "train.steps=6", "train.alternating=true"
    )
    for step in range(1, 7):
        expected = backward if (step - 1) % 2 == 0 else set(store[0]) - backward
        assert moved(store[step - 1], store[step]) == expected, step


def test_delay_with_alternation_aligns_every_step_of_the_delay(tmp_path):
    store, backward = parameters_after_each_step(
        tmp_path / "run",
        "rule.name=sa",
        "train.steps=8",
        "train.delay_epochs=1",
        "train.alternating=true",
        "data.train_limit=128",
    )
    # 4 steps per epoch: steps 0..3 (the delay) all move B; then steps 4, 6 align and 5, 7 train the task
    for step in range(1, 9):
        expected = backward if step <= 4 or (step - 1) % 2 == 0 else set(store[0]) - backward
        assert moved(store[step - 1], store[step]) == expected, step


@pytest.mark.parametrize("rule", ["kp", "aa"])
def test_accumulation_equals_the_large_batch(tmp_path, rule):
    common = [
        "train.dtype=float64",
        f"rule.name={rule}",
        "train.steps=5",
        "optim.alignment.name=sgd",
        "optim.alignment.lr=0.1",
        "train.model_l2=0.01",
        "train.alignment_rate=0.5",
    ]
    big = train(recipe(*common), tmp_path / "big").model.state_dict()
    small = train(recipe(*common, "train.accumulate=4"), tmp_path / "small").model.state_dict()
    for key in big:
        torch.testing.assert_close(small[key], big[key], rtol=1e-10, atol=1e-12)
    initial = Trainer(recipe(*common), tmp_path / "init").model.state_dict()  # built, not trained
    assert not torch.equal(big["1.backward_weight"], initial["1.backward_weight"])


@pytest.mark.parametrize(
    "align_forward_weight, clip", [(False, False), (True, False), (False, True)], ids=["fold", "W-aligned", "clipped"]
)
def test_a_step_updates_by_the_gradients_of_the_documented_sum(tmp_path, align_forward_weight, clip):
    """One train_step with plain gradient descent at lr 1 moves every parameter by minus autograd's
    gradient of loss_rate * (task + model_l2 |W|^2 / 2) + alignment_rate * R, R written out by hand
    for sa (W takes R's part with align_forward_weight), although neither the model L2 nor the
    kernels' quadratic forms are in the graph: their gradients are added in closed form, B's own
    decay folded into the alignment optimizer's weight decay ("fold"), or, when clipping reads the
    gradients first, written into the gradient itself ("clipped": the clip is too large to act)."""
    trainer = Trainer(
        recipe(
            "rule.name=sa",
            "train.dtype=float64",
            "train.model_l2=0.3",
            "train.loss_rate=2",
            "train.alignment_rate=5",
            f"rule.align_forward_weight={str(align_forward_weight).lower()}",
            f"train.clip_grad_norm={1e9 if clip else 'null'}",
            *(f"optim.{c}.{k}" for c in ("task", "alignment") for k in ("name=gd", "lr=1.0", "momentum=0.0")),
            "optim.task.weight_decay=0.0",
            "optim.task.schedule=null",
            "optim.alignment.schedule=null",
        ),
        tmp_path / "run",
    )
    x, y = next(iter(trainer.batches()))
    x = x.double()
    params = dict(trainer.model.named_parameters())

    def documented_sum():
        logits = trainer.model(x)
        cross_entropy = F.cross_entropy(logits, y)
        task = cross_entropy + 0.3 * 0.5 * sum(w.pow(2).sum() for w in forward_weights(trainer.model))
        sa = 0.0
        for i in (1, 3):
            W, B = params[f"{i}.weight"], params[f"{i}.backward_weight"]
            W = W if align_forward_weight else W.detach()
            sa = sa + 1e-3 * (W.pow(2).sum() + B.pow(2).sum()) - 2e-3 * (W * B).sum()
        return cross_entropy, task, 2 * task + 5 * sa, sa

    cross_entropy, task, total, sa = documented_sum()
    expected = dict(zip(params, torch.autograd.grad(total, list(params.values())), strict=True))
    torch.testing.assert_close(alignment_loss(trainer.model), sa)  # the public loss keeps every term
    step_total, step_task, _ = trainer.losses(x, y)
    torch.testing.assert_close(step_task, task)
    # sa is all quadratic forms and the L2 one more: only the cross-entropy is left in the graph
    torch.testing.assert_close(step_total, 2 * cross_entropy)
    assert trainer.optimizer_decay() == (None if clip else pytest.approx(5 * 2e-3))
    before = {name: p.detach().clone() for name, p in params.items()}
    trainer.train_step(x, y)
    for name, param in params.items():
        torch.testing.assert_close(before[name] - param.detach(), expected[name], rtol=1e-10, atol=1e-12, msg=name)
    assert len(forward_weights(trainer.model)) == 2 and len(backward_weights(trainer.model)) == 2
    assert trainer.task.noisy == [] and trainer.alignment.noisy == []


@pytest.mark.parametrize("optimizer", ["adam", "nesterov", "gd"])
@pytest.mark.parametrize("rule, scheduled", [("sa", "self"), ("kp", "angle")])
def test_b_steps_on_the_tensor_its_gradient_is_a_multiple_of_as_on_the_gradient_written_out(
    tmp_path, rule, scheduled, optimizer
):
    """sa's B gradient ``alignment_rate (wb W + 2 bb B)`` is stepped on with ``B.grad = W``, kp's
    ``angle_scale dW + alignment_rate 2 bb B`` with ``B.grad = W.grad`` (its op hands B nothing), each
    with its gradient factor and the decay as weight decay: 8 steps, with the scheduled weight halved
    after 4 (the factor changes, so the moments are rescaled), a checkpoint's state loaded in the
    middle, move every parameter as the same run whose clipping (too large to act) makes the trainer
    write the gradient out; B.grad is None again after each step."""
    common = [
        f"rule.name={rule}",
        "train.dtype=float64",
        "train.alignment_rate=5",
        "train.loss_rate=2",
        "train.model_l2=0.1",
        f"optim.alignment.name={optimizer}",
        "optim.alignment.lr=0.01",
        f"optim.alignment.momentum={0.0 if optimizer == 'gd' else 0.9}",
        "optim.alignment.weight_decay=0.01",
        f"rule.schedules={{{scheduled}: {{kind: step, drops: [0.5], factor: 0.5}}}}",  # 8 steps an epoch: at 4
    ]
    pointed = Trainer(recipe(*common), tmp_path / "pointed")
    written = Trainer(recipe(*common, "train.clip_grad_norm=1e9"), tmp_path / "written")
    backward = [n for n, _ in pointed.model.named_parameters() if n.endswith("backward_weight")]
    factors = []
    for step, (x, y) in zip(range(8), pointed.batches(), strict=False):
        if step == 3:  # the pointed run's optimizer state through a checkpoint's round trip
            saved = pointed.alignment.state_dict()
            assert saved.get("gradient_factor", 1.0) == factors[-1]
            pointed.alignment.load_state_dict(torch.load(save_and_read(tmp_path, saved), weights_only=True))
        for trainer in (pointed, written):
            trainer.train_step(x.double(), y)
            trainer.step += 1
        factors.append(pointed.alignment.gradient_factor)
        assert written.alignment.gradient_factor == 1.0
        assert all(pointed.model.get_parameter(n).grad is None for n in backward)
    weight = pointed.model[1].rule.weights[scheduled]
    first = -5 * weight if rule == "sa" else weight * 5 / 2  # sa: scale wb (self: wb = -w); kp: angle_scale
    assert factors == [pytest.approx(first)] * 4 + [pytest.approx(first / 2)] * 4
    for (name, a), b in zip(pointed.model.named_parameters(), written.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


def save_and_read(tmp_path, state):
    path = tmp_path / "optimizer.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("rule, accumulate", [("bp", 1), ("fa", 1), ("kp", 1), ("kp", 2), ("sa", 2)])
def test_the_model_l2_moves_each_forward_kernel_alone_by_its_closed_form(tmp_path, rule, accumulate):
    """With plain gradient descent at lr 1, a step with model_l2 = 0.3 and loss_rate 2 lands
    2 * 0.3 * W0 below the same step without it, for every W and nothing else: kp's B (given the
    task's dW in the backward) and sa's B (whose gradient reads W) move exactly as without the L2,
    and micro-batches add the term once per step."""
    common = [
        f"rule.name={rule}",
        "train.dtype=float64",
        "train.loss_rate=2",
        f"train.accumulate={accumulate}",
        *(f"optim.{c}.{k}" for c in ("task", "alignment") for k in ("name=gd", "lr=1.0", "momentum=0.0")),
        "optim.task.weight_decay=0.0",
    ]
    after = {}
    for l2 in (0.3, 0.0):
        trainer = Trainer(recipe(*common, f"train.model_l2={l2}"), tmp_path / f"l2-{l2}")
        x, y = next(iter(trainer.batches()))
        initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        trainer.train_step(x.double(), y)
        after[l2] = {name: p.detach() for name, p in trainer.model.named_parameters()}
    kernels = {
        name for name, p in trainer.model.named_parameters() if any(p is w for w in forward_weights(trainer.model))
    }
    assert kernels
    assert bool(backward_weights(trainer.model)) == (rule in ("kp", "sa"))  # their B is checked to stay put
    for name, start in initial.items():
        expected = -2 * 0.3 * start if name in kernels else torch.zeros_like(start)
        torch.testing.assert_close(after[0.3][name] - after[0.0][name], expected, rtol=1e-9, atol=1e-12, msg=name)


def test_noise_only_on_backward_weights_is_wired(tmp_path):
    trainer = Trainer(
        recipe(
            "rule.name=kp",
            "optim.task.noise.std=0.1",
            "optim.task.noise.only_backward_weights=true",
            "optim.alignment.noise.std=0.1",
        ),
        tmp_path / "run",
    )
    assert trainer.task.noisy == []
    assert [id(p) for p in trainer.alignment.noisy] == [id(p) for p in backward_weights(trainer.model)]


def test_absolute_noise_is_the_update_noise_at_the_base_lr_and_follows_the_schedule(tmp_path):
    # lr(step) = 0.002 * 32/256 * schedule; schedule 1 until epoch 1, then linearly to 0.5 at epoch 2
    schedule = "{kind: linear, start: 1, end: 2, from_value: 1.0, to_value: 0.5}"
    trainer = Trainer(
        recipe(
            "rule.name=sa",
            "optim.alignment.name=adam",
            "optim.alignment.lr=0.002",
            "optim.alignment.rescale_lr=true",
            f"optim.alignment.schedule={schedule}",
            "optim.alignment.noise.std=0.01",
            "optim.alignment.noise.absolute=true",
        ),
        tmp_path / "run",
    )
    alignment, per_epoch = trainer.alignment, trainer.steps_per_epoch
    assert alignment.noise_std * alignment.lr(0) == pytest.approx(0.01)  # not 0.01 * 0.00025
    assert alignment.noise_std * alignment.lr(2 * per_epoch) == pytest.approx(0.005)
    relative = Trainer(
        recipe("rule.name=sa", "optim.alignment.lr=0.002", "optim.alignment.noise.std=0.01"), tmp_path / "r"
    )
    assert relative.alignment.noise_std * relative.alignment.lr(0) == pytest.approx(0.01 * 0.002)


class Killed(Exception):
    pass


def kill_at(step):
    def hook(trainer, s):
        if s == step:
            raise Killed

    return hook


def test_killed_and_resumed_run_ends_bitwise_equal(tmp_path):
    # input noise, noisy updates and Adam state all depend on restored RNG and optimizer states
    r = recipe(
        "rule.name=wm",
        "rule.noise_std=0.5",
        "train.steps=14",
        "train.deterministic=true",
        "train.checkpoint_every=3",
        "optim.alignment.noise.std=0.5",
        "data.train_limit=128",
    )
    whole = train(r, tmp_path / "whole").model.state_dict()
    with pytest.raises(Killed):
        train(r, tmp_path / "killed", on_step=kill_at(8))
    assert checkpoint.load(tmp_path / "killed" / "checkpoint.pt")["step"] == 6
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["status"] == "stopped"
    resumed = train(r, tmp_path / "killed", resume=True).model.state_dict()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    steps = [rec["step"] for rec in records(tmp_path / "killed")]
    assert steps[-8:] == list(range(7, 15))


def test_resumed_record_equals_the_uninterrupted_one(tmp_path):
    # logs at 4, 8, 12, 14; the checkpoint at 6 holds the loss/accuracy sums of steps 5-6
    r = recipe(
        "rule.name=kp",
        "train.steps=14",
        "train.deterministic=true",
        "train.checkpoint_every=3",
        "train.metrics_every=4",
        "data.train_limit=128",
    )
    train(r, tmp_path / "whole")
    with pytest.raises(Killed):
        train(r, tmp_path / "killed", on_step=kill_at(8))  # step 8 was logged before the kill
    train(r, tmp_path / "killed", resume=True)

    def timeless(run):
        return [{k: v for k, v in rec.items() if k != "seconds_per_step"} for rec in records(tmp_path / run)]

    assert [rec["step"] for rec in timeless("killed")] == [0, 4, 8, 12, 14]
    assert timeless("killed") == timeless("whole")


def test_evaluation_does_not_change_training(tmp_path):
    # input noise and noisy updates draw from the global RNG: evaluating in between must not shift it
    common = [
        "rule.name=wm",
        "rule.noise_std=0.5",
        "train.steps=6",
        "optim.alignment.noise.std=0.5",
        "data.train_limit=128",
    ]
    quiet = train(recipe(*common, "train.eval_every=0"), tmp_path / "quiet").model.state_dict()
    evaluated = train(recipe(*common, "train.eval_every=2"), tmp_path / "evaluated").model.state_dict()
    assert all(torch.equal(evaluated[k], quiet[k]) for k in quiet)


@pytest.mark.parametrize("check_every", [1, 7])  # 7: checkpoints in between still wait for a check
def test_nan_loss_stops_naming_step_and_layer_and_keeps_last_good_checkpoint(tmp_path, check_every):
    # B's update under sa is B <- B - lr * 2e-3 * (B - W): lr 1e5 multiplies B - W by -199 each step
    r = recipe(
        "rule.name=sa",
        "optim.alignment.name=sgd",
        "optim.alignment.lr=1e5",
        "train.steps=50",
        "train.checkpoint_every=1",
        f"train.check_finite_every={check_every}",
    )
    flagged_when_saved = []  # on_step runs right after each checkpoint
    with pytest.raises(TrainingDiverged) as info:
        train(r, tmp_path / "run", on_step=lambda t, s: flagged_when_saved.append(bool(t.nonfinite)))
    assert flagged_when_saved and not any(flagged_when_saved)
    message = str(info.value)
    assert "NaN/inf by step" in message and ".backward_weight (norm" in message and "checkpoint" in message
    step = int(message.split("by step ")[1].split(" ")[0])
    state = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == step and step < 50
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    def poison(trainer, step):  # fa: B is in no loss, so the next loss stays finite
        if step == 3:
            with torch.no_grad():
                trainer.model[3].backward_weight.fill_(math.inf)

    with pytest.raises(TrainingDiverged, match="weights became NaN/inf by step 3"):
        train(recipe("rule.name=fa", "train.steps=10", "train.checkpoint_every=1"), tmp_path / "run", on_step=poison)
    state = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_loader_workers_are_seeded_by_the_run_seed(tmp_path):
    seeds = {
        Trainer(recipe(f"train.seed={seed}"), tmp_path / str(seed)).batches().generator.initial_seed()
        for seed in (0, 1)
    }
    assert len(seeds) == 2  # data.num_workers > 0: the augmentation draws differ between seeds


def test_topk_counts():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    targets = torch.tensor([2, 0, 0])
    assert topk_correct(logits, targets, [1, 2, 3]).tolist() == [1, 2, 3]


def test_cli_run_and_resume(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["run", "digits-mlp", *TINY, "train.steps=4", "train.checkpoint_every=2", "rule.name=fa"]
    assert main([*args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (out / "summary.json").exists() and str(out) in captured.out
    assert "nalign: converted to rule 'fa': 2 Linear\n" in captured.out  # what convert did, as convert reports it
    assert "left on native backprop" not in captured.err  # nothing was: no warning
    assert main([*args[:-2], "train.steps=6", "train.checkpoint_every=2", "rule.name=fa", "--resume", str(out)]) == 0
    assert checkpoint.load(out / "checkpoint.pt")["step"] == 6
    assert main(["run", "digits-mlp", "rule.name=nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown rule 'nope'" in capsys.readouterr().err


def test_cli_run_takes_out_or_resume_not_both(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "digits-mlp", "--out", str(tmp_path / "a"), "--resume", str(tmp_path / "b")])
    assert info.value.code == 2 and "--resume: not allowed with argument --out" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_resume_without_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"cannot resume.*checkpoint\.pt does not exist"):
        train(recipe("train.steps=1"), tmp_path / "empty", resume=True)


def test_no_length_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"train\.steps or train\.epochs"):
        Trainer(recipe("train.epochs=null"), tmp_path / "run")


def test_backend_errors_name_the_option(tmp_path):
    with pytest.raises(UserError, match=r"unknown option 'autocast'.*autocast_dtype"):
        train(recipe("backend.options={autocast: bfloat16}"), tmp_path / "a")
    with pytest.raises(UserError, match="autocast_dtype='bfloat61'"):
        train(recipe("backend.options={autocast_dtype: bfloat61}"), tmp_path / "b")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="backend 'cuda' needs a CUDA GPU"):
            train(recipe("backend.name=cuda"), tmp_path / "c")


def test_bf16_autocast_on_cpu_trains(tmp_path):
    result = train(
        recipe("rule.name=kp", "train.steps=3", "backend.options={autocast_dtype: bfloat16}"), tmp_path / "r"
    )
    assert result.summary["status"] == "finished" and math.isfinite(result.summary["test_loss"])


@pytest.mark.parametrize(
    "options, message",
    [
        ("{channels_last: 1}", "backend 'cpu' option channels_last=1: 1 is not true or false"),
        ("{autocast_dtype: 16}", "backend 'cpu' option autocast_dtype=16: 16 is not a string or null"),
    ],
)
def test_backend_option_types_are_checked(tmp_path, options, message):
    with pytest.raises(UserError, match=f"^{message}$"):
        train(recipe(f"backend.options={options}"), tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("threads", [1, 2])
def test_summary_records_the_torch_version_and_thread_count(tmp_path, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train(recipe("train.steps=2"), tmp_path / "run")
    finally:
        torch.set_num_threads(before)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["torch_version"] == torch.__version__ and summary["torch_threads"] == threads
