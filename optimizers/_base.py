"""The ``torch.optim.Optimizer`` base of optpilot's own optimizers (:mod:`optimizers.lamb`,
:mod:`optimizers.lion`, :mod:`optimizers._schedulefree`) and the choice of path for each tensor.

:class:`OptpilotOptimizer` handles closures, sparse-gradient rejection, per-group validation,
``state_dict`` loading that keeps the state dtype and pickling of the implementation choice;
:func:`cpu_kernel_split` says which tensors optpilot's C kernels (:mod:`optimizers._cpu_kernels`)
can run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any, ClassVar, TypeVar, overload

import torch

from optimizers import _cpu_kernels
from optimizers._checks import Implementation, check_foreach, check_implementation
from optimizers._scratch import ScratchBuffers, state_dtype
from optimizers.registry import ParamsT

T = TypeVar("T")

# ATen's grain size: its elementwise ops and reductions on fewer elements run on one thread.
# torch's fused optimizer kernels and BLAS open a parallel region for any size, which costs more
# than the work on small tensors, and far more when the machine is oversubscribed (a barrier then
# waits for a descheduled thread), so the CPU fast paths use them only on tensors at least this big.
PARALLEL_MIN_NUMEL = 32768


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
