"""The ``torch.optim.Optimizer`` base of optpilot's own optimizers (:mod:`optimizers.lamb`,
:mod:`optimizers.lion`, :mod:`optimizers._schedulefree`) and the choice of path for each tensor.

:class:`OptpilotOptimizer` handles closures, sparse-gradient rejection, per-group validation,
``state_dict`` loading that keeps the state dtype and pickling of the implementation choice, and
runs a step: it unpacks each parameter group once into parallel tensor lists and a record of
scalar hyperparameters (a :class:`GroupStep`), then hands each tensor to one path. The paths are
module-level functions of the optimizer's module that take tensor lists and scalars, as
torch.optim's ``_single_tensor_adam`` / ``_multi_tensor_adam`` do:

* ``reference``: the paper's equations, tensor by tensor (``implementation="reference"``);
* optpilot's C kernels (:mod:`optimizers._cpu_kernels`): contiguous fp32 CPU tensors of all groups
  in one call;
* ``torch._foreach_*`` kernels: CUDA, and small CPU tensors;
* a per-tensor in-place loop on scratch buffers: large CPU tensors the kernels do not take;
* ``torch.compile`` (:mod:`optimizers._compiled`): with ``implementation="fused"``, every tensor
  the C kernels do not take, all groups in one compiled call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, ClassVar, Generic, Protocol, TypeVar, overload

import torch

from optimizers import _cpu_kernels
from optimizers._checks import Implementation, check_foreach, check_implementation
from optimizers._compiled import run_compiled
from optimizers._scratch import ScratchBuffers, state_dtype
from optimizers.registry import ParamsT

T = TypeVar("T")

# ATen's grain size: its elementwise ops and reductions on fewer elements run on one thread.
# torch's fused optimizer kernels and BLAS open a parallel region for any size, which costs more
# than the work on small tensors, and far more when the machine is oversubscribed (a barrier then
# waits for a descheduled thread), so the CPU fast paths use them only on tensors at least this big.
PARALLEL_MIN_NUMEL = 32768


def use_torch_fused(tensor: torch.Tensor) -> bool:
    """Whether a per-tensor loop runs torch's one-pass ``_fused_adamw_`` / ``_fused_sgd_``
    kernels on ``tensor``: on CUDA, and on CPU from ATen's grain size (they open a parallel
    region for any size)."""
    device = tensor.device.type
    return device == "cuda" or (device == "cpu" and tensor.numel() >= PARALLEL_MIN_NUMEL)


def fused_adamw_direction(
    s: torch.Tensor, x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *,
    beta1: float, beta2: float, eps: float, weight_decay: float,
    step_tensors: dict[torch.device, torch.Tensor], step: int,
) -> None:
    """``s = -(m_hat / (sqrt(v_hat) + eps) + weight_decay * x)`` with ``m`` and ``v`` updated,
    in one pass of torch's fused AdamW kernel: ``s = -weight_decay * x``, then the kernel with
    lr 1 and no decay subtracts the bias-corrected Adam direction in the pass that updates the
    moments. ``step_tensors``: the step count as a tensor per device, made once per call."""
    if weight_decay != 0:
        torch.mul(x, -weight_decay, out=s)
    else:
        s.zero_()
    step_t = step_tensors.get(x.device)
    if step_t is None:
        step_t = torch.tensor(float(step), dtype=torch.float32, device=x.device)
        step_tensors[x.device] = step_t
    torch._fused_adamw_(
        [s], [g], [m], [v], [], [step_t],
        lr=1.0, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps,
        amsgrad=False, maximize=False,
    )  # fmt: skip


class Hyperparameters(Protocol):
    """An optimizer's record of a group's scalars for one step (a NamedTuple)."""

    def row(self) -> list[float]:
        """The floats the C kernel and the compiled step take for each tensor of the group."""
        ...


H = TypeVar("H", bound=Hyperparameters)


@dataclass(frozen=True)
class GroupStep(Generic[H]):
    """One parameter group's share of a step: its tensors that have gradients as parallel lists
    (params, grads, then one list per entry of the optimizer's ``_tensor_state``) and its scalar
    hyperparameters for this step (``hyper``, the optimizer's own record)."""

    tensors: list[list[torch.Tensor]]
    hyper: H

    def take(self, indices: Sequence[int]) -> GroupStep[H]:
        """The same step for the tensors at ``indices`` only."""
        return GroupStep([take(ts, indices) for ts in self.tensors], self.hyper)


@dataclass(frozen=True)
class StepPaths:
    """An optimizer's step, path by path: module-level functions of its module. ``reference``,
    ``foreach`` and ``loop`` take one group's parallel tensor lists (params, grads, states) and
    its hyperparameters (``loop`` also ``scratch=``, the optimizer's scratch buffers);
    ``kernels`` (with the scratch buffers) and ``compiled`` take every group's work at once."""

    reference: Callable[..., None]
    foreach: Callable[..., None]
    loop: Callable[..., None]
    kernels: Callable[[list[GroupStep[Any]], ScratchBuffers], None]
    compiled: Callable[[list[GroupStep[Any]]], None]


class OptpilotOptimizer(torch.optim.Optimizer, Generic[H]):
    """Common behaviour of optpilot's optimizers. Subclasses implement ``_validate_group``,
    ``_init_state``, ``_hyperparameters`` (or all of ``_group_steps``) and ``_paths``."""

    # Per-parameter state tensors, in the order the paths take them.
    _tensor_state: ClassVar[tuple[str, ...]] = ()
    # Entries every group has that are not constructor arguments (or arrived later): added to the
    # defaults, and filled in where missing when loading a pickle or an older ``state_dict``.
    _group_fill: ClassVar[dict[str, Any]] = {}
    implementation: Implementation
    foreach: bool | None

    def __init__(
        self,
        params: ParamsT,
        defaults: dict[str, Any],
        implementation: Implementation,
        foreach: bool | None,
    ) -> None:
        self.implementation = check_implementation(implementation)
        self.foreach = check_foreach(foreach)
        self._scratch = ScratchBuffers()
        self._validate_group(defaults)
        fill = {key: value for key, value in self._group_fill.items() if key not in defaults}
        super().__init__(params, {**defaults, **fill})

    # -- hooks for subclasses -------------------------------------------------------------------

    def _validate_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _hyperparameters(self, group: dict[str, Any]) -> H:
        """The group's scalars for this step (called once per group and step, with or without
        gradients)."""
        raise NotImplementedError

    def _paths(self) -> StepPaths:
        """The functions that run a step."""
        raise NotImplementedError

    # -- torch.optim.Optimizer API --------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._update()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state saved by any implementation; state keeps its dtype (fp32 for bf16 params).

        ``torch.optim.Optimizer`` casts floating state to the parameter's dtype, which would round
        fp32 moments of bf16 parameters to bf16; the saved tensors are re-cast here instead.
        """
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        saved_state = state_dict["state"]
        for param_id, param in zip(saved_ids, params, strict=True):
            saved = saved_state.get(param_id)
            if saved is None:
                continue
            state = self.state[param]
            for key, value in saved.items():
                if key == "step":
                    state[key] = int(value.item() if isinstance(value, torch.Tensor) else value)
                elif key in self._tensor_state and isinstance(value, torch.Tensor):
                    state[key] = value.to(
                        device=param.device, dtype=state_dtype(param), copy=True
                    ).contiguous()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["implementation"] = self.implementation
        state["foreach"] = self.foreach
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Called by unpickling (with the keys added by __getstate__) and by load_state_dict (with
        # only state and param_groups: the implementation in use then stays as it is).
        state = dict(state)
        if "implementation" in state or not hasattr(self, "implementation"):
            self.implementation = check_implementation(state.pop("implementation", "fast"))
        if "foreach" in state or not hasattr(self, "foreach"):
            self.foreach = check_foreach(state.pop("foreach", None))
        if not hasattr(self, "_scratch"):
            self._scratch = ScratchBuffers()
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self._group_fill.items():
                group.setdefault(key, value)

    # -- the step -------------------------------------------------------------------------------

    def _update(self) -> None:
        """Every group's step, each tensor through one path; the C kernels and the compiled step
        take all groups' tensors in one call."""
        steps = self._group_steps()
        paths = self._paths()
        if self.implementation == "reference":
            for step in steps:
                paths.reference(*step.tensors, step.hyper)
            return
        kernel_work: list[GroupStep[H]] = []
        compiled_work: list[GroupStep[H]] = []
        for step in steps:
            kernel, batched, looped, compiled = self._step_paths(*step.tensors)
            for work, idx in ((kernel_work, kernel), (compiled_work, compiled)):
                if idx:
                    work.append(step.take(idx))
            if batched:
                paths.foreach(*step.take(batched).tensors, step.hyper)
            if looped:
                paths.loop(*step.take(looped).tensors, step.hyper, scratch=self._scratch)
        if kernel_work:
            paths.kernels(kernel_work, self._scratch)
        if compiled_work:
            paths.compiled(compiled_work)

    def _group_steps(self) -> list[GroupStep[H]]:
        """Each group's step: its scalars (for every group) and tensors (groups with gradients)."""
        steps: list[GroupStep[H]] = []
        for group in self.param_groups:
            params, grads, states = self._gather(group)
            hyper = self._hyperparameters(group)
            if params:
                steps.append(GroupStep(self._tensor_lists(params, grads, states), hyper))
        return steps

    def _tensor_lists(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict[str, Any]]
    ) -> list[list[torch.Tensor]]:
        """``params``, ``grads``, then one list per ``_tensor_state`` key."""
        return [params, grads, *([state[key] for state in states] for key in self._tensor_state)]

    # -- helpers --------------------------------------------------------------------------------

    def _gather(
        self, group: dict[str, Any]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict[str, Any]]]:
        """Parameters of ``group`` that have gradients, their gradients and (initialised) state."""
        params: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        states: list[dict[str, Any]] = []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients; use a dense "
                    "gradient or an optimizer that accepts sparse ones (e.g. SparseAdam, Adagrad)"
                )
            if torch.is_complex(p):
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
            state = self.state[p]
            if not state:
                self._init_state(p, state)
            params.append(p)
            grads.append(grad)
            states.append(state)
        return params, grads, states

    def _use_foreach(self, params: Sequence[torch.Tensor]) -> bool:
        """foreach kernels where they exist as real multi-tensor kernels (CUDA and friends);
        per-tensor in-place loops with scratch buffers on CPU (measured faster there)."""
        if self.foreach is not None:
            return self.foreach
        return bool(params) and all(p.device.type not in ("cpu", "meta") for p in params)

    def _fast_split(
        self, *tensors: Sequence[torch.Tensor]
    ) -> tuple[list[int], list[int], list[int]]:
        """Which indices the ``"fast"`` implementation runs through optpilot's CPU kernels, which
        through its foreach kernels and which through its per-tensor loop. ``tensors``: parallel
        lists (params, grads, states).

        With ``foreach=None`` on CPU: the kernels for contiguous fp32 tensors where they can be
        built (one parallel region per step, one pass per tensor, 1.8x faster than the loop for
        LAMB); of the rest, tensors under ATen's grain size (biases, norms) through foreach
        together, where ATen loops over them in C++ instead of the Python loop paying about 20 us
        of dispatch per tensor, and larger ones through the loop. Elsewhere (CUDA), or as
        ``foreach`` says: all through foreach, or all through the loop."""
        params = tensors[0]
        every = list(range(len(params)))
        if self._use_foreach(params):
            return [], every, []
        if self.foreach is False:
            return [], [], every
        kernel, rest = cpu_kernel_split(*tensors, warn=False)
        small = [i for i in rest if params[i].numel() < PARALLEL_MIN_NUMEL]
        return kernel, small, [i for i in rest if params[i].numel() >= PARALLEL_MIN_NUMEL]

    def _step_paths(
        self, *tensors: Sequence[torch.Tensor]
    ) -> tuple[list[int], list[int], list[int], list[int]]:
        """Indices for each path of a ``"fast"`` or ``"fused"`` step: (optpilot's CPU kernels,
        foreach kernels, per-tensor loop, torch.compile). ``tensors``: parallel lists (params,
        grads, states)."""
        if self.implementation == "fused":
            kernel, rest = cpu_kernel_split(*tensors)
            return kernel, [], [], rest
        return (*self._fast_split(*tensors), [])


def cpu_kernel_split(
    *tensors: Sequence[torch.Tensor], warn: bool = True
) -> tuple[list[int], list[int]]:
    """Indices that optpilot's C kernels run (every tensor of the index contiguous fp32 on CPU;
    none when the kernels are disabled or cannot be built), and the rest. ``tensors``: parallel
    lists (params, grads, states); ``warn``: see ``_cpu_kernels.load``."""
    every = list(range(len(tensors[0])))
    if not _cpu_kernels.enabled():
        return [], every
    picked = [i for i in every if all(_cpu_kernels.eligible(ts[i]) for ts in tensors)]
    if not picked or _cpu_kernels.load(warn=warn) is None:
        return [], every
    chosen = set(picked)
    return picked, [i for i in every if i not in chosen]


def take(values: Sequence[T], indices: Sequence[int]) -> list[T]:
    return [values[i] for i in indices]


def group_by_device_dtype(
    indices: Iterable[int], params: Sequence[torch.Tensor]
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``params`` bucketed by (device, parameter dtype), for foreach kernels."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i in indices:
        buckets.setdefault((params[i].device, params[i].dtype), []).append(i)
    return buckets


@dataclass(frozen=True)
class ForeachBucket:
    """Tensors of one (device, parameter dtype) for foreach kernels, the math in the state dtype:
    ``xs`` are the parameters themselves or their copies in the state dtype (``write_back``
    stores copies into the parameters), ``grads`` the gradients in the state dtype, ``states``
    one list per state tensor kind."""

    params: list[torch.Tensor]
    xs: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: list[list[torch.Tensor]]

    def write_back(self) -> None:
        if self.xs[0] is not self.params[0]:
            torch._foreach_copy_(self.params, self.xs)


def foreach_buckets(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], *states: Sequence[torch.Tensor]
) -> Iterator[ForeachBucket]:
    """The tensors bucketed for foreach kernels (see :class:`ForeachBucket`); the state dtype is
    that of the first state list."""
    for idx in group_by_device_dtype(range(len(params)), params).values():
        ps = take(params, idx)
        bucket_states = [take(ts, idx) for ts in states]
        dtype = bucket_states[0][0].dtype
        xs = [p.to(dtype) for p in ps] if ps[0].dtype != dtype else ps
        gs = [g if g.dtype == dtype else g.to(dtype) for g in take(grads, idx)]
        yield ForeachBucket(ps, xs, gs, bucket_states)


def compiled_rows(body: Callable[..., None]) -> Callable[[list[GroupStep[Any]]], None]:
    """The compiled path of a step ``body(groups, scalars)`` whose ``scalars[j]`` is group
    ``j``'s ``hyper.row()``: all groups in one compiled call."""

    def compiled(work: list[GroupStep[Any]]) -> None:
        run_compiled(body, [step.tensors for step in work], [step.hyper.row() for step in work])

    return compiled
