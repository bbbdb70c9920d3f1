"""One optimizer per loss component, its learning-rate schedule, and noisy updates.

A :class:`ComponentOptimizer` owns a torch optimizer over one group of parameters (the task
loss's W, biases and BatchNorm, or the alignment loss's backward weights). Its learning rate
at global step ``s`` is::

    lr(s) = lr * (batch_size / 256 if rescale_lr else 1) * schedule(s / steps_per_epoch - shift)

with ``schedule`` from :func:`neural_alignment.core.schedules.make_schedule` and ``shift`` the
delay (in epochs) before this component starts. After each optimizer step, if ``noise_std``
is positive, every parameter in ``noisy`` receives Gaussian noise of std ``noise_std * lr(s)``
(noisy updates: the noise is added to the update, so it scales with the step size).

A component can step on a gradient it is not handed in full (:meth:`ComponentOptimizer.
set_gradient_factor`): ``k p.grad + d p`` from ``p.grad`` alone, k carried by the optimizer's own
hyperparameters (SGD's lr, Adam's eps, ``maximize``) and d by its weight decay. The trainer uses
it to give sa's B ``p.grad = W`` and kp's B ``p.grad = W.grad``: no gradient is written for them.

Every optimizer runs torch's fused kernel (one pass over each tensor for the whole update, not
one pass per elementwise operation) when all its parameters are floating point on a device that
has one (``FUSED_DEVICES``); elsewhere (XLA) torch's default. Fused or not, the update is the
same formula; a state dict loads into either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from neural_alignment.core.errors import UserError
from neural_alignment.core.schedules import make_schedule

REFERENCE_BATCH = 256

MOMENTS = {"momentum_buffer": 1, "exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2}
"""The optimizer state a gradient factor scales, with the power of the gradient each holds (SGD's, Adam's)."""

FUSED_DEVICES = ("cpu", "cuda")
"""Device types whose parameters get torch's fused optimizer kernels."""


def fusable(params: Sequence[torch.Tensor]) -> bool:
    """True when every parameter is floating point on one device of a type in ``FUSED_DEVICES``."""
    return (
        bool(params)
        and len({p.device for p in params}) == 1
        and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    )


def _sgd(params, lr, momentum, weight_decay):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fusable(params) or None)


def _nesterov(params, lr, momentum, weight_decay):
    if momentum <= 0:
        raise UserError(f"optimizer 'nesterov' needs momentum > 0, got momentum={momentum}")
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True, fused=fusable(params) or None
    )


def _gd(params, lr, momentum, weight_decay):
    if momentum:
        raise UserError(f"optimizer 'gd' is plain gradient descent and takes no momentum, got momentum={momentum}")
    return torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=weight_decay, fused=fusable(params) or None)


def _adam(params, lr, momentum, weight_decay):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fusable(params) or None)


def _adamw(params, lr, momentum, weight_decay):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fusable(params) or None)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "nesterov": _nesterov,
    "gd": _gd,
    "adam": _adam,
    "adamw": _adamw,
}


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """A torch optimizer by name: sgd, nesterov, gd (SGD without momentum), adam, adamw (both ignore ``momentum``)."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](list(params), lr, momentum, weight_decay)


@dataclass(frozen=True)
class LRSchedule:
    """``lr(step) = base_lr * scale * schedule(step / steps_per_epoch - shift)``; scale = batch/256 if rescaled."""

    base_lr: float
    schedule: Callable[[float], float]
    steps_per_epoch: int
    scale: float = 1.0
    shift: float = 0.0

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch - self.shift

    def __call__(self, step: int) -> float:
        return self.base_lr * self.scale * self.schedule(self.epoch(step))


def make_lr_schedule(
    lr: float, schedule: Any, steps_per_epoch: int, batch_size: int, rescale_lr: bool = False, shift: float = 0.0
) -> LRSchedule:
    """An :class:`LRSchedule` from recipe values (``schedule`` is a ``make_schedule`` config)."""
    if steps_per_epoch < 1:
        raise UserError(
            f"steps per epoch must be at least 1, got {steps_per_epoch} (is the batch larger than the data?)"
        )
    scale = batch_size / REFERENCE_BATCH if rescale_lr else 1.0
    return LRSchedule(float(lr), make_schedule(schedule), steps_per_epoch, scale, float(shift))


class ComponentOptimizer:
    """The optimizer of one loss component: torch optimizer + lr schedule + update noise."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr: LRSchedule,
        noise_std: float = 0.0,
        noisy: Sequence[torch.Tensor] = (),
    ):
        self.optimizer = optimizer
        self.lr = lr
        self.noise_std = float(noise_std)
        self.noisy = list(noisy) if self.noise_std > 0 else []
        self.weight_decay = [float(group["weight_decay"]) for group in optimizer.param_groups]
        """Each group's own weight decay (the recipe's), to which :meth:`set_extra_weight_decay` adds."""
        self.eps = [float(group.get("eps", 0.0)) for group in optimizer.param_groups]
        """Each group's own eps (Adam's; 0 for SGD), which :meth:`set_gradient_factor` divides."""
        self.extra_weight_decay = 0.0
        self.gradient_factor = 1.0
        """The factor k of :meth:`set_gradient_factor`: the optimizer steps on ``k p.grad + weight decay``."""

    @property
    def couples_weight_decay(self) -> bool:
        """True when the optimizer adds ``weight_decay * p`` to each gradient before its update (SGD,
        Adam; not AdamW's decoupled decay): a term ``d p`` of the gradient can then be its weight decay."""
        opt = self.optimizer
        if isinstance(opt, torch.optim.SGD):
            return True
        return (
            isinstance(opt, torch.optim.Adam)
            and not isinstance(opt, torch.optim.AdamW)
            and not any(group.get("decoupled_weight_decay", False) for group in opt.param_groups)
        )

    def set_extra_weight_decay(self, extra: float) -> None:
        """Every group's weight decay becomes its own plus ``extra`` (a gradient term ``extra * p``
        the optimizer then adds inside its own pass; only where :attr:`couples_weight_decay`)."""
        self.extra_weight_decay = float(extra)
        self._write_groups()

    @property
    def takes_gradient_factor(self) -> bool:
        """True when :meth:`set_gradient_factor` applies: SGD (its update is linear in the gradient)
        and Adam (its update is unchanged when the gradient and eps are divided by one number)."""
        return isinstance(self.optimizer, (torch.optim.SGD, torch.optim.Adam))

    def set_gradient_factor(self, factor: float) -> None:
        """From now on, step on the gradient ``g = factor * p.grad + d p`` (d: the group's weight decay,
        own plus extra) without forming it, so that ``p.grad`` may be a tensor that g is a multiple of
        (sa's B takes ``p.grad = W``). With ``u = |factor|``, the optimizer reads ``g / u = sign(factor)
        p.grad + (d / u) p``: the sign as torch's ``maximize``, the decay as weight decay ``d / u``, and

        - SGD (momentum, Nesterov): the update is linear in g, so the learning rate becomes ``lr u``;
        - Adam: ``m / (sqrt(v) + eps)`` is unchanged when g and eps are both divided by u, so eps
          becomes ``eps / u`` (AdamW's decoupled decay does not read g and stays as it is).

        The moments are then kept in units of ``g / u`` (momentum and Adam's first moment divided by u,
        its second moments by u^2): a change of u rescales them (two passes over Adam's state, so a
        factor that changes every step costs more than it saves). :meth:`state_dict` saves them in
        those units with the factor. Only where :attr:`takes_gradient_factor`."""
        factor = float(factor)
        if factor == self.gradient_factor:
            return
        if not factor or (factor != 1.0 and not self.takes_gradient_factor):
            raise ValueError(f"gradient factor {factor} on {type(self.optimizer).__name__}")
        ratio = abs(self.gradient_factor) / abs(factor)
        if ratio != 1.0:
            for state in self.optimizer.state.values():
                for key, power in MOMENTS.items():
                    if state.get(key) is not None:
                        state[key].mul_(ratio**power)
        self.gradient_factor = factor
        self._write_groups()

    def _write_groups(self) -> None:
        """Each group's weight decay, eps and maximize from the recipe's values, the extra weight
        decay and the gradient factor (see :meth:`set_gradient_factor`; the lr: :meth:`set_step`)."""
        unit = abs(self.gradient_factor)
        for group, own, eps in zip(self.optimizer.param_groups, self.weight_decay, self.eps, strict=True):
            decay = own + self.extra_weight_decay
            group["weight_decay"] = decay / unit if self.couples_weight_decay else decay
            group["maximize"] = self.gradient_factor < 0
            if "eps" in group:
                group["eps"] = eps / unit

    @property
    def _lr_unit(self) -> float:
        """What the lr is multiplied by: ``|gradient factor|`` for SGD, 1 for Adam."""
        return abs(self.gradient_factor) if isinstance(self.optimizer, torch.optim.SGD) else 1.0

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def set_step(self, step: int) -> float:
        """Set every group's lr to ``lr(step)`` (times the gradient factor's share, see
        :meth:`set_gradient_factor`); returns ``lr(step)``."""
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * self._lr_unit
        return lr

    def step(self, step: int) -> None:
        """One update at global step ``step``: :meth:`update`, then :meth:`add_noise`."""
        self.update(step)
        self.add_noise(step)

    def update(self, step: int) -> None:
        """The optimizer's step with the lr of global step ``step``."""
        self.set_step(step)
        self.optimizer.step()

    def add_noise(self, step: int) -> None:
        """Noise of std ``noise_std * lr(step)`` on every noisy parameter (nothing when there is none)."""
        if self.noisy:
            add_update_noise(self.noisy, self.noise_std * self.lr(step))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """The torch optimizer's state dict; with a gradient factor other than 1, also the factor
        (``gradient_factor``), the unit its moments are kept in (see :meth:`set_gradient_factor`)."""
        state = self.optimizer.state_dict()
        return state if self.gradient_factor == 1.0 else {**state, "gradient_factor": self.gradient_factor}

    def load_state_dict(self, state: dict) -> None:
        """Load ``state`` keeping this optimizer's own kernel choice (``fused``, ``foreach``): a
        state dict saved on another device type (or before fused kernels) still loads. The moments
        keep the unit they were saved in (``gradient_factor``, 1 when absent); weight decay, eps
        and maximize follow this optimizer's recipe, extra weight decay and gradient factor."""
        state = dict(state)
        self.gradient_factor = float(state.pop("gradient_factor", 1.0))
        own = [{k: group.get(k) for k in ("fused", "foreach")} for group in self.optimizer.param_groups]
        groups = [{**saved, **mine} for saved, mine in zip(state["param_groups"], own, strict=True)]
        self.optimizer.load_state_dict({**state, "param_groups": groups})
        self._write_groups()


@torch.no_grad()
def add_update_noise(params: Iterable[torch.Tensor], std: float) -> None:
    """Add N(0, std^2) noise, independently per element, to each tensor in ``params``."""
    for p in params:
        p.add_(torch.randn_like(p), alpha=std)
