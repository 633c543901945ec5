"""Learning-rate schedules: a small frozen record (:class:`Schedule`) and one call that turns it
into a torch ``LRScheduler`` (:func:`build_scheduler`).

>>> scheduler = optimizers.build_scheduler(opt, "cosine", total_steps=10_000,
...                                        warmup_fraction=0.05)  # doctest: +SKIP
>>> for batch in data:  # doctest: +SKIP
...     loss(batch).backward(); opt.step(); opt.zero_grad(); scheduler.step()

Every schedule is a multiplier of each parameter group's peak lr (the lr the group had when the
scheduler was built), a closed form of the step ``s`` (0-based: the lr that the ``s``-th call of
``optimizer.step()`` uses), the number of steps ``T`` and the warm-up length ``W``:

================  ===========================================================================
warm-up           ``(s + 1) / W`` for ``s < W`` (every schedule; none when ``W = 0``): the
                  first step already moves, and step ``W - 1`` runs at the peak
``cosine``        ``f + (1 - f) * (1 + cos(pi * p)) / 2``, ``p = min(1, (s - W) / (T - W))``
``linear``        ``f + (1 - f) * (1 - p)``, the same ``p``
``wsd``           warm-up, then stable at the peak until ``D = T - round(decay_fraction * T)``,
                  then ``f + (1 - f) * shape(q)`` with ``q = min(1, (s - D) / (T - D))`` and
                  ``shape`` linear ``1 - q``, cosine ``(1 + cos(pi * q)) / 2`` or ``1 - sqrt(q)``
``constant``      ``1``
``inverse_sqrt``  ``sqrt(max(W, 1) / (s + 1))``: continuous with the warm-up at ``s = W - 1``,
                  no horizon (``T`` is needed only for ``warmup_fraction``)
``none``          ``1`` and no warm-up: the lr is left alone (schedule-free optimizers, which warm
                  up on their own); a scheduler for it is a no-op, so code that always steps a
                  scheduler needs no special case
================  ===========================================================================

``f`` is ``final_lr_fraction``. The decaying schedules reach ``f`` at ``s = T``, the value the
scheduler holds after the last step: the last of the ``T`` steps still moves.

References: Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts"
(cosine); Goyal et al. 2017, "Accurate, Large Minibatch SGD" (linear warm-up); Vaswani et al. 2017,
"Attention Is All You Need" (inverse square root); Hu et al. 2024, "MiniCPM" and Hägele et al.
2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations" (warm-up-
stable-decay, the 1-sqrt cool-down, 20% of the steps).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol, TypeAlias, cast, get_args

import torch
from torch.optim.lr_scheduler import LRScheduler

from optimizers._checks import check_steps

__all__ = [
    "DECAY_SHAPES",
    "SCHEDULE_NAMES",
    "DecayShape",
    "Schedule",
    "ScheduleName",
    "ScheduledLR",
    "build_scheduler",
    "evaluation_mode",
    "is_schedule_free",
]

ScheduleName: TypeAlias = Literal["cosine", "linear", "wsd", "constant", "inverse_sqrt", "none"]
DecayShape: TypeAlias = Literal["linear", "cosine", "1-sqrt"]
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)
DECAY_SHAPES: tuple[str, ...] = get_args(DecayShape)

# Schedules that decay towards final_lr_fraction over a known number of steps.
_DECAYING = frozenset({"cosine", "linear", "wsd"})
# WSD's defaults: a 20% cool-down matches cosine's loss at the same budget (Hägele et al. 2024).
WSD_DECAY_FRACTION = 0.2
WSD_DECAY_SHAPE: DecayShape = "linear"
# Param-group entries that are learning rates besides "lr" (MuonAdamW's AdamW side, "aux_lr"):
# the scheduler scales them by the same factor.
EXTRA_LR_KEYS: tuple[str, ...] = ("aux_lr",)


def _fraction(name: str, value: object, *, low_inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    number = float(value)
    low_ok = number >= 0.0 if low_inclusive else number > 0.0
    if not (math.isfinite(number) and low_ok and number <= 1.0):
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"{name}: {value!r} is outside {bracket}0, 1]")
    return number


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: what it is called and the knobs it has (see the module docstring
    for the closed forms). Fields a schedule does not use are ``None``; every field is a JSON
    value (:meth:`to_dict`, :meth:`from_dict`).

    * ``warmup_steps`` or ``warmup_fraction`` (of ``total_steps``): at most one; neither means
      no warm-up (``warmup_steps=0``).
    * ``final_lr_fraction``: where ``cosine``, ``linear`` and ``wsd`` end, as a fraction of the
      peak (default 0).
    * ``decay_fraction``, ``decay_shape``: ``wsd``'s cool-down length (fraction of
      ``total_steps``, default 0.2) and shape (``linear``, ``cosine`` or ``1-sqrt``; default
      ``linear``).

    Invalid values raise ``ValueError`` naming the field.
    """

    name: ScheduleName
    warmup_steps: int | None = None
    warmup_fraction: float | None = None
    final_lr_fraction: float | None = None
    decay_fraction: float | None = None
    decay_shape: DecayShape | None = None

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_NAMES:
            raise ValueError(f"name: expected one of {SCHEDULE_NAMES}, got {self.name!r}")
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise ValueError("warmup_fraction: give warmup_steps or warmup_fraction, not both")
        if self.warmup_fraction is not None:
            self._set("warmup_fraction", _fraction("warmup_fraction", self.warmup_fraction))
        else:
            self._set("warmup_steps", check_steps("warmup_steps", self.warmup_steps or 0))
        if self.name == "none" and (self.warmup_fraction or self.warmup_steps):
            key = "warmup_fraction" if self.warmup_fraction else "warmup_steps"
            raise ValueError(f"{key}: the 'none' schedule leaves the lr alone (a schedule-free "
                             "optimizer warms up through its own warmup_steps)")
        decaying = self.name in _DECAYING
        if self.final_lr_fraction is not None or decaying:
            if not decaying:
                raise ValueError(f"final_lr_fraction: the {self.name!r} schedule does not decay "
                                 "to a final lr")
            value = 0.0 if self.final_lr_fraction is None else self.final_lr_fraction
            self._set("final_lr_fraction", _fraction("final_lr_fraction", value))
        for key in ("decay_fraction", "decay_shape"):
            if getattr(self, key) is not None and self.name != "wsd":
                raise ValueError(f"{key}: only the 'wsd' schedule has a separate decay phase")
        if self.name == "wsd":
            value = WSD_DECAY_FRACTION if self.decay_fraction is None else self.decay_fraction
            self._set("decay_fraction", _fraction("decay_fraction", value, low_inclusive=False))
            shape = WSD_DECAY_SHAPE if self.decay_shape is None else self.decay_shape
            if shape not in DECAY_SHAPES:
                raise ValueError(f"decay_shape: expected one of {DECAY_SHAPES}, got {shape!r}")
            self._set("decay_shape", shape)

    def _set(self, key: str, value: object) -> None:
        object.__setattr__(self, key, value)

    # -- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (``None`` where the schedule has no such knob)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """The inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: not a schedule field (accepted: "
                             f"{', '.join(f.name for f in fields(cls))})")
        if "name" not in data:
            raise ValueError("name: missing")
        return cls(**data)

    # -- the closed form ----------------------------------------------------------------------

    @property
    def needs_total_steps(self) -> bool:
        """Whether the schedule depends on the number of steps (a decay, or a warm-up fraction)."""
        return self.name in _DECAYING or self.warmup_fraction is not None

    def describe(self) -> str:
        """The schedule in words, e.g. ``5% warm-up, then cosine decay to 10% of the peak``."""
        if self.name == "none":
            return "no schedule: the lr stays as set"
        if self.warmup_fraction is not None:
            warmup = f"{100 * self.warmup_fraction:.3g}% warm-up"
        else:
            warmup = f"{self.warmup_steps}-step warm-up" if self.warmup_steps else ""
        final = (f"{100 * self.final_lr_fraction:.3g}% of the peak" if self.final_lr_fraction
                 else "0")
        if self.name == "cosine":
            after = f"cosine decay to {final}"
        elif self.name == "linear":
            after = f"linear decay to {final}"
        elif self.name == "wsd":
            after = (f"the peak held until the last {100 * cast(float, self.decay_fraction):.3g}% "
                     f"of the steps, then a {self.decay_shape} decay to {final}")
        elif self.name == "constant":
            after = "a constant lr"
        else:
            after = "decay as 1/sqrt(step)"
        return f"{warmup}, then {after}" if warmup else f"{after}, no warm-up"

    def warmup(self, total_steps: int | None = None) -> int:
        """Warm-up length in steps, for ``total_steps`` steps."""
        if self.warmup_fraction is None:
            return cast(int, self.warmup_steps)
        return round(self._total(total_steps) * self.warmup_fraction)

    def check(self, total_steps: int | None) -> None:
        """ValueError (naming the field) unless the schedule fits in ``total_steps`` steps."""
        if total_steps is None and not self.needs_total_steps:
            return
        total = self._total(total_steps)
        warmup = self.warmup(total)
        if warmup > total:
            raise ValueError(f"warmup_steps: {warmup} warm-up steps exceed total_steps {total}")
        if self.name == "wsd" and warmup + self._decay_steps(total) > total:
            raise ValueError(f"decay_fraction: {warmup} warm-up and {self._decay_steps(total)} "
                             f"decay steps exceed total_steps {total}")

    def factor(self, step: int, total_steps: int | None = None) -> float:
        """Multiplier of the peak lr at optimizer step ``step`` (0-based)."""
        self.check(total_steps)
        warmup = self.warmup(total_steps)
        if step < warmup:
            return (step + 1) / warmup
        if self.name in ("constant", "none"):
            return 1.0
        if self.name == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / (step + 1))
        total = self._total(total_steps)
        final = cast(float, self.final_lr_fraction)
        if self.name == "wsd":
            decay_start = total - self._decay_steps(total)
            if step < decay_start:
                return 1.0
            shape = _decay(cast(DecayShape, self.decay_shape),
                           _progress(step, decay_start, total))
        else:
            shape = _decay(cast(DecayShape, self.name), _progress(step, warmup, total))
        return final + (1.0 - final) * shape

    def _decay_steps(self, total: int) -> int:
        return round(total * cast(float, self.decay_fraction))

    def _total(self, total_steps: int | None) -> int:
        if total_steps is None:
            raise ValueError(f"total_steps: the {self.name!r} schedule needs the number of steps"
                             + (" (for warmup_fraction)" if self.name not in _DECAYING else ""))
        return check_steps("total_steps", total_steps, low=1)


def _progress(step: int, start: int, total: int) -> float:
    """How far ``step`` is through the phase ``[start, total)``: 0 at the start, 1 at the end."""
    return min(1.0, (step - start) / max(1, total - start))


def _decay(shape: DecayShape, progress: float) -> float:
    """From 1 at ``progress`` 0 down to 0 at ``progress`` 1."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - math.sqrt(progress)


class ScheduledLR(LRScheduler):
    """A torch ``LRScheduler`` that sets every param group's lr (and the other lrs of
    ``EXTRA_LR_KEYS``) to its peak times ``schedule.factor(step, total_steps)``.

    The peaks are the groups' lrs when the scheduler is built (torch's ``initial_lr``). Call
    ``scheduler.step()`` after each ``optimizer.step()``; ``state_dict``/``load_state_dict``
    round-trip it like any torch scheduler.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule: expected a Schedule or a name, got {schedule!r}")
        schedule.check(total_steps)
        self.schedule = schedule
        self.total_steps = None if total_steps is None else check_steps("total_steps", total_steps,
                                                                   low=1)
        if last_epoch == -1:
            for group in optimizer.param_groups:
                for key in EXTRA_LR_KEYS:
                    if key in group:
                        group.setdefault(f"initial_{key}", group[key])
        super().__init__(optimizer, last_epoch)

    def _factor(self) -> float:
        return self.schedule.factor(max(self.last_epoch, 0), self.total_steps)

    def get_lr(self) -> list[float | torch.Tensor]:
        factor = self._factor()
        return [base * factor for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        return self.get_lr()

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        factor = self._factor()
        for group in self.optimizer.param_groups:
            for key in EXTRA_LR_KEYS:
                peak = group.get(f"initial_{key}")
                if peak is not None:
                    group[key] = peak * factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Schedule | str | Mapping[str, Any],
    total_steps: int | None = None,
    *,
    warmup_steps: int | None = None,
    warmup_fraction: float | None = None,
    final_lr_fraction: float | None = None,
    decay_fraction: float | None = None,
    decay_shape: DecayShape | None = None,
) -> ScheduledLR:
    """A torch ``LRScheduler`` running ``schedule`` over ``total_steps`` optimizer steps.

    ``schedule`` is a :class:`Schedule`, its fields as a mapping (``Schedule.to_dict()``, the
    ``schedule`` object of a recommendation or of an ask/tell trial in JSON), or a name
    (``cosine``, ``linear``, ``wsd``, ``constant``, ``inverse_sqrt``, ``none``) with the record's
    fields as keywords. ``total_steps`` may be left out for schedules without a horizon
    (``constant``, ``inverse_sqrt`` with ``warmup_steps``, ``none``). Schedule-free optimizers
    (:func:`is_schedule_free`) are meant to run at a constant lr after their own warm-up (the
    ``none`` schedule); a schedule on top of them is allowed but seldom wanted.
    """
    knobs: dict[str, Any] = {
        "warmup_steps": warmup_steps, "warmup_fraction": warmup_fraction,
        "final_lr_fraction": final_lr_fraction, "decay_fraction": decay_fraction,
        "decay_shape": decay_shape,
    }  # fmt: skip
    if isinstance(schedule, Mapping):
        schedule = Schedule.from_dict(schedule)
    if isinstance(schedule, Schedule):
        given = [key for key, value in knobs.items() if value is not None]
        if given:
            raise ValueError(f"{given[0]}: pass either a Schedule or a name with its fields, "
                             "not both")
    elif isinstance(schedule, str):
        schedule = Schedule(cast(ScheduleName, schedule), **knobs)
    return ScheduledLR(optimizer, schedule, total_steps)


class _TrainEval(Protocol):
    def train(self) -> object: ...

    def eval(self) -> object: ...


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` keeps separate training and evaluation points, switched by its
    ``train()`` and ``eval()`` methods (schedule-free optimizers: optpilot's and the
    ``schedulefree`` package's). Such an optimizer must be put in eval mode before the model is
    evaluated or saved, and back in train mode before the next step."""
    return callable(getattr(optimizer, "train", None)) and callable(
        getattr(optimizer, "eval", None)
    )


@contextmanager
def evaluation_mode(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside the block, a schedule-free optimizer's parameters hold its evaluation point
    (``optimizer.eval()`` on entry, ``optimizer.train()`` on exit); other optimizers are left
    alone. Wrap evaluation (and saving the model) in it::

        with optimizers.evaluation_mode(opt):
            val_loss = evaluate(model)
    """
    switch = cast(_TrainEval, optimizer) if is_schedule_free(optimizer) else None
    if switch is not None:
        switch.eval()
    try:
        yield
    finally:
        if switch is not None:
            switch.train()
