"""optpilot's C kernels for the fused LAMB, Lion and schedule-free steps on CPU
(``_cpu_kernels.c``).

``implementation="fused"`` runs contiguous fp32 CPU tensors through these kernels and everything
else (CUDA, fp16/bf16/fp64, strided tensors) through ``torch.compile``. Inductor's CPU code is
one loop nest per tensor with its temporaries allocated per call; LAMB's two passes over a tensor
then either recompute the Adam direction or allocate a tensor-sized buffer per tensor and step
(page faults every step), 1.4-1.9x the time of torch's fused AdamW where these kernels take
about 1.1x (``bench/optimizer_step.py``).

The source is compiled on first use with the C compiler that torch.compile also needs on CPU
(``$CC``, else ``cc``), for this machine (``-march=native``), and cached in
``$OPTPILOT_KERNEL_CACHE`` (default ``~/.cache/optpilot/kernels``) under a name that hashes the
source, the compiler, the flags and the CPU, so a cache shared between different machines stays
correct. The default ``"fast"`` implementation (with ``foreach=None``) uses the same kernels for
those tensors when they can be built, and its eager loop otherwise. Set ``OPTPILOT_CPU_KERNELS=0``
to use torch.compile (fused) and the eager loop (fast) for CPU tensors too. Without a working
compiler both fall back the same way, with one warning per process.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch.autograd.graph import increment_version

__all__ = ["CpuKernels", "eligible", "load"]

SOURCE_NAME = "_cpu_kernels.c"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-ffp-contract=off",
         "-fPIC", "-shared")  # fmt: skip
# Floats per tensor. LAMB: lr, b1, b2, eps, wd, 1/(1-b1^t), 1/sqrt(1-b2^t), clip divisor.
LAMB_HYPERPARAMETERS = 8
LION_HYPERPARAMETERS = 4  # per tensor: lr, b1, b2, wd
TRUST_RATIO, TRUST_CLIP = 1, 2  # LAMB flags per tensor
# Schedule-free, per tensor: lr, wd, c, y_lr; AdamW adds b2, eps, 1/sqrt(1-b2^t).
SCHEDULE_FREE_SGD_HYPERPARAMETERS = 4
SCHEDULE_FREE_ADAMW_HYPERPARAMETERS = 7

_ptr = ctypes.c_void_p
_i64 = ctypes.c_int64
_i32 = ctypes.c_int32


def enabled() -> bool:
    """False when ``OPTPILOT_CPU_KERNELS=0`` (torch.compile then runs CPU tensors too)."""
    return os.environ.get("OPTPILOT_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no")


def eligible(tensor: torch.Tensor) -> bool:
    return (
        tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.is_contiguous()
    )


def cache_dir() -> Path:
    configured = os.environ.get("OPTPILOT_KERNEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "optpilot" / "kernels"


def _cpu_description() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines)))


def _compiler() -> str:
    name = os.environ.get("CC") or "cc"
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"no C compiler {name!r} on PATH (set CC)")
    return path


def build(directory: Path | None = None) -> Path:
    """The kernels' shared library for this machine: compiled now, or found in the cache."""
    source = resources.files("optimizers").joinpath(SOURCE_NAME).read_bytes()
    compiler = _compiler()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout
    digest = hashlib.sha256(
        b"\0".join(
            part.encode() if isinstance(part, str) else part
            for part in (source, compiler, version, " ".join(FLAGS), _cpu_description())
        )
    ).hexdigest()[:20]
    directory = directory or cache_dir()
    library = directory / f"optpilot_cpu_kernels_{digest}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as work:
        src = Path(work) / SOURCE_NAME
        src.write_bytes(source)
        out = Path(work) / library.name
        result = subprocess.run(
            [compiler, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(out, library)  # atomic: concurrent workers never load a half-written file
    return library


class CpuKernels:
    """The loaded library, with typed entry points taking lists of tensors."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        self._lamb = lib.optpilot_lamb_step
        self._lamb.argtypes = [_i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64,
                               _ptr, _i32]  # fmt: skip
        self._lamb.restype = None
        self._lion = lib.optpilot_lion_step
        self._lion.argtypes = [_i64, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i32]
        self._lion.restype = None
        self._schedulefree = lib.optpilot_schedulefree_step
        self._schedulefree.argtypes = [_i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i32]
        self._schedulefree.restype = None
        self.path = path

    def lamb(
        self,
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        exp_avgs: Sequence[torch.Tensor],
        exp_avg_sqs: Sequence[torch.Tensor],
        hyper: Sequence[float],
        flags: Sequence[int],
        split_numel: int,
        scratch: torch.Tensor,
    ) -> None:
        """One LAMB step. ``hyper``: ``LAMB_HYPERPARAMETERS`` floats per tensor; ``scratch``: a
        contiguous fp32 buffer of at least ``scratch_numel(params, split_numel)`` elements."""
        half = scratch.numel() // 2
        if any(p.numel() >= split_numel and p.numel() > half for p in params):
            raise ValueError("scratch is smaller than twice the largest shared tensor")
        threads = torch.get_num_threads()
        partials = (ctypes.c_double * (4 * threads))()
        _step(self._lamb, LAMB_HYPERPARAMETERS, params, (grads, exp_avgs, exp_avg_sqs), hyper,
              (ctypes.c_int32 * len(params))(*flags), split_numel, scratch.data_ptr(), half,
              partials, threads)

    def lion(
        self,
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        exp_avgs: Sequence[torch.Tensor],
        hyper: Sequence[float],
        split_numel: int,
    ) -> None:
        _step(self._lion, LION_HYPERPARAMETERS, params, (grads, exp_avgs), hyper, split_numel,
              torch.get_num_threads())

    def schedulefree(
        self,
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        zs: Sequence[torch.Tensor],
        exp_avg_sqs: Sequence[torch.Tensor] | None,
        hyper: Sequence[float],
        split_numel: int,
    ) -> None:
        """One schedule-free step: AdamW with ``exp_avg_sqs``, SGD without."""
        per_tensor = (SCHEDULE_FREE_SGD_HYPERPARAMETERS if exp_avg_sqs is None
                      else SCHEDULE_FREE_ADAMW_HYPERPARAMETERS)
        _step(self._schedulefree, per_tensor, params, (grads, zs, exp_avg_sqs), hyper,
              split_numel, torch.get_num_threads())


def scratch_numel(params: Sequence[torch.Tensor], split_numel: int) -> int:
    """Elements of the LAMB scratch buffer: two halves, each as large as the largest tensor that
    the threads share."""
    return 2 * max((p.numel() for p in params if p.numel() >= split_numel), default=0)


def _step(
    function: Any, per_tensor: int, params: Sequence[torch.Tensor],
    tensors: Sequence[Sequence[torch.Tensor] | None], hyper: Sequence[float], *tail: Any,
) -> None:
    """Call a kernel: ``function(n, params, *tensors, numels, hyper, *tail)`` (a missing tensor
    list as NULL), after checking ``hyper``'s length; then bump the parameters' versions."""
    n = len(params)
    _check_rows(hyper, per_tensor, n)
    function(
        n, _pointers(params), *(None if ts is None else _pointers(ts) for ts in tensors),
        (ctypes.c_int64 * n)(*(p.numel() for p in params)),
        (ctypes.c_float * len(hyper))(*hyper), *tail,
    )  # fmt: skip
    _wrote(params)


def _check_rows(hyper: Sequence[float], per_tensor: int, n: int) -> None:
    """The kernels read ``per_tensor`` floats for each of the ``n`` tensors: no more, no less."""
    if len(hyper) != per_tensor * n:
        raise ValueError(f"expected {per_tensor} hyperparameters per tensor for {n} tensors, "
                         f"got {len(hyper)}")


def _wrote(tensors: Sequence[torch.Tensor]) -> None:
    """Bump the version counters that a write through a raw pointer bypasses, so that autograd
    still refuses a backward through a graph that saved a parameter before the step."""
    for tensor in tensors:
        increment_version(tensor)


def _pointers(tensors: Sequence[torch.Tensor]) -> ctypes.Array[ctypes.c_void_p]:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


@functools.cache
def _load_once() -> CpuKernels | str:
    """The kernels, or why they cannot be built (tried once per process)."""
    try:
        return CpuKernels(build())
    except (OSError, RuntimeError) as exc:
        return str(exc)


_warned = False


def load(*, warn: bool = True) -> CpuKernels | None:
    """The kernels, built on first use; None when disabled or when they cannot be built (then,
    with ``warn``, a RuntimeWarning once per process)."""
    global _warned
    if not enabled():
        return None
    kernels = _load_once()
    if isinstance(kernels, CpuKernels):
        return kernels
    if warn and not _warned:
        _warned = True
        warnings.warn(
            f"optpilot: cannot build the CPU kernels ({kernels}); implementation='fused' uses "
            "torch.compile for CPU tensors instead, 'fast' its eager loop",
            RuntimeWarning,
            stacklevel=2,
        )
    return None


def reset() -> None:
    """Forget the loaded kernels and the warning (the next ``load`` tries again)."""
    global _warned
    _warned = False
    _load_once.cache_clear()
