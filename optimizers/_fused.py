"""Machinery shared by optpilot's own optimizers (:mod:`optimizers.lamb`, :mod:`optimizers.lion`).

* argument checks that raise ``ValueError`` naming the offending field;
* the state dtype rule: fp32 state (and fp32 math) for fp16/bf16 parameters, the parameter's own
  dtype otherwise;
* :class:`ScratchBuffers`: flat buffers kept across steps and reused across tensors, so the
  eager ``"fast"`` path allocates nothing per step (on CPU, glibc serves multi-MB temporaries with
  ``mmap`` and returns them on ``free``, so a per-step temporary pays page faults every step);
* :func:`compiled_step`: ``torch.compile`` of a step body, compiled once per optimizer structure
  (shapes, dtypes and devices of the tensors, static flags); hyperparameters and bias corrections
  are passed as tensors so that changing them (learning-rate schedules, the step count) never
  recompiles;
* :func:`cpu_kernel_split`: which tensors optpilot's C kernels (:mod:`optimizers._cpu_kernels`)
  can run;
* :class:`OptpilotOptimizer`: the ``torch.optim.Optimizer`` base that ties these together
  (closures, sparse-gradient rejection, per-group validation, ``state_dict`` loading that keeps
  the state dtype, pickling of the implementation choice).
"""

from __future__ import annotations

import math
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar, cast, get_args, overload

import torch

from optimizers import _cpu_kernels

Implementation: TypeAlias = Literal["reference", "fast", "fused"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)
ParamsT: TypeAlias = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
StepFn = TypeVar("StepFn", bound=Callable[..., Any])
T = TypeVar("T")

_LOW_PRECISION = (torch.float16, torch.bfloat16)

# ATen's grain size: its elementwise ops and reductions on fewer elements run on one thread.
# torch's fused optimizer kernels and BLAS open a parallel region for any size, which costs more
# than the work on small tensors, and far more when the machine is oversubscribed (a barrier then
# waits for a descheduled thread), so the CPU fast paths use them only on tensors at least this big.
PARALLEL_MIN_NUMEL = 32768

# Inductor options for steps that need per-tensor locality (LAMB: both norms, then the update
# while the tensor is still in cache). Two nodes that share less than this many bytes are not
# fused; the default (10 bytes) lets inductor fuse the loops of *different* tensors of the same
# shape into one loop merely because they read the same few hyperparameter scalars, which turns
# "per tensor: norms, then update" into "norms of all tensors, then updates of all tensors" and
# doubles DRAM traffic (measured: 32 ms instead of 11 ms for 16M parameters on 2 CPU cores).
# Purely elementwise steps (Lion) gain from that fusion (fewer parallel regions) and keep the
# default.
PER_TENSOR_LOCALITY: dict[str, Any] = {"score_fusion_memory_threshold": 4096}


# ------------------------------------------------------------------------------------------------
# Argument checks


def check_number(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """``value`` as a float if it is a finite real number within the bounds; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name}: must be finite, got {value}")
    low_ok = number >= low if low_inclusive else number > low
    high_ok = number <= high if high_inclusive else number < high
    if not (low_ok and high_ok):
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(f"{name}: {value} is outside {lo}{low}, {high}{hi}")
    return number


def check_betas(value: object) -> tuple[float, float]:
    """A pair ``(beta1, beta2)`` with each beta in [0, 1)."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {value!r}")
    b1 = check_number("betas[0]", value[0], low=0.0, high=1.0, high_inclusive=False)
    b2 = check_number("betas[1]", value[1], low=0.0, high=1.0, high_inclusive=False)
    return b1, b2


def check_steps(name: str, value: object, *, low: int = 0) -> int:
    """A whole number of steps (an int, or a float with an integral value) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a whole number of steps, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{name}: expected a whole number of steps, got {value!r}")
    steps = int(value)
    if steps < low:
        raise ValueError(f"{name}: must be at least {low}, got {value!r}")
    return steps


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")
    return value


def check_implementation(value: object) -> Implementation:
    if value not in IMPLEMENTATIONS:
        raise ValueError(f"implementation: expected one of {IMPLEMENTATIONS}, got {value!r}")
    return cast(Implementation, value)


def check_foreach(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"foreach: expected None or a bool, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------
# Dtypes, scratch buffers


def state_dtype(param: torch.Tensor) -> torch.dtype:
    """Dtype of optimizer state (and of the step's math) for ``param``."""
    return torch.float32 if param.dtype in _LOW_PRECISION else param.dtype


class ScratchBuffers:
    """Flat buffers kept across steps; ``get`` hands out a view shaped like the current tensor.

    One buffer per (slot, device, dtype), grown to the largest tensor seen; views are cached per
    shape, so a steady-state step allocates nothing. Buffers are plain attributes of the
    optimizer, never part of its ``state_dict``: every step overwrites them before reading.
    """

    def __init__(self) -> None:
        self._flat: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._views: dict[tuple[str, torch.device, torch.dtype, torch.Size], torch.Tensor] = {}

    def reserve(self, slot: str, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        key = (slot, device, dtype)
        flat = self._flat.get(key)
        if flat is None or flat.numel() < numel:
            self._flat[key] = torch.empty(numel, dtype=dtype, device=device)
            self._views = {k: v for k, v in self._views.items() if k[:3] != key}

    def get(
        self, slot: str, shape: torch.Size, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        key = (slot, device, dtype, shape)
        view = self._views.get(key)
        if view is None:
            numel = math.prod(shape)
            self.reserve(slot, numel, dtype, device)
            view = self._flat[(slot, device, dtype)][:numel].view(shape)
            self._views[key] = view
        return view

    def working(self, slot: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` itself when it is contiguous and of ``dtype``; else a copy of it in this
        slot (the caller writes a modified copy back)."""
        if tensor.dtype == dtype and tensor.is_contiguous():
            return tensor
        copy = self.get(slot, tensor.shape, dtype, tensor.device)
        copy.copy_(tensor)
        return copy

    def clear(self) -> None:
        self._flat.clear()
        self._views.clear()


# ------------------------------------------------------------------------------------------------
# Compiled steps

_COMPILED: OrderedDict[tuple[Any, ...], Callable[..., Any]] = OrderedDict()
_COMPILED_MAX = 64


def tensor_signature(tensors: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    """What a compiled step specialises on: shape, stride, dtype and device of each tensor."""
    return tuple((tuple(t.shape), t.stride(), t.dtype, str(t.device)) for t in tensors)


def compiled_step(
    body: StepFn, key: tuple[Any, ...], options: dict[str, Any] | None = None
) -> StepFn:
    """``torch.compile(body)`` for one structure ``key``, cached for the process.

    Dynamo keeps compiled variants per code object and stops compiling after a few variants of the
    same one, so each structure gets its own copy of ``body``'s code: many models (or many
    parameter groups) in one process each get a compiled step, and guard checks stay short. The
    cache is keyed by the body, the structure and the thread count (inductor bakes the thread count
    into CPU kernels) and keeps the most recent ``_COMPILED_MAX`` entries. ``options`` are inductor
    options for this body (default: inductor's own).
    """
    opts = dict(options or {})
    full_key = (
        body.__module__,
        body.__qualname__,
        torch.get_num_threads(),
        key,
        tuple(sorted(opts.items())),
    )
    fn = _COMPILED.get(full_key)
    if fn is None:
        code = body.__code__.replace()  # a distinct code object: its own dynamo cache
        clone = types.FunctionType(
            code, body.__globals__, body.__name__, body.__defaults__, body.__closure__
        )
        clone.__qualname__ = body.__qualname__
        fn = torch.compile(clone, fullgraph=True, dynamic=False, options=opts)
        _COMPILED[full_key] = fn
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    else:
        _COMPILED.move_to_end(full_key)
    return cast(StepFn, fn)


def clear_compiled_steps() -> None:
    """Forget every compiled step (the next fused step compiles again)."""
    _COMPILED.clear()


# ------------------------------------------------------------------------------------------------
# Base optimizer


class OptpilotOptimizer(torch.optim.Optimizer):
    """Common behaviour of optpilot's optimizers; subclasses implement ``_validate_group``,
    ``_init_state`` and ``_update``."""

    _tensor_state: ClassVar[tuple[str, ...]] = ()
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
        super().__init__(params, defaults)

    # -- hooks for subclasses -------------------------------------------------------------------

    def _validate_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update(self) -> None:
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
