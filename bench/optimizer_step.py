"""Time one optimizer step of every registered optimizer, as a ratio to torch's fused AdamW.

Parameters: a deep MLP's 48 tensors (24 weight matrices 816x816 + 24 bias vectors, 16.0M fp32
parameters) with fixed random gradients, shared by all candidates (each optimizer keeps its own
state). Every round times one step of each candidate, in a rotating order, so that drift (other
processes, thermal state) hits all of them alike; a row reports the median over the timed rounds
and its ratio to ``torch.optim.AdamW(fused=True)`` measured in the same rounds.

Besides the registry (``optimizers.create(name, params)`` with default hyperparameters; "lamb",
"lion", "schedulefree_adamw" and "schedulefree_sgd" run optpilot's C kernels on these fp32
tensors), rows for optpilot's LAMB and Lion with ``implementation="reference"``, ``"fused"`` (the
same kernels on CPU; torch.compile with ``OPTPILOT_CPU_KERNELS=0``, compiled in warm-up) and the
default path's eager loop (``foreach=False``, what runs where the kernels cannot be built), the
same reference and loop rows for the schedule-free optimizers, and the peers where importable
(``pip install optpilot[bench]``): the LAMB/Lion of timm, pytorch_optimizer and lion-pytorch, and
the authors' schedule-free AdamW and SGD (``schedulefree``, its default foreach path).

    python -m bench.optimizer_step                 # full run (several minutes, muon is slow)
    python -m bench.optimizer_step --quick         # smoke run on 24 small layers
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import optimizers
from optimizers import Lamb, Lion, ScheduleFreeAdamW, ScheduleFreeSGD
from optimizers._checks import Implementation

BASELINE = "torch AdamW fused"
# Row name -> target ratio to fused AdamW (issue #2), checked in the summary lines.
TARGETS: dict[str, float] = {
    "lion": 1.1,
    "lamb": 3.0,
    "optpilot Lion fused": 0.8,
    "optpilot LAMB fused": 1.5,
    "schedulefree_adamw": 1.2,  # issue #18; about 1.0 is the memory-traffic bound
}


@dataclass
class Candidate:
    name: str
    build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    optimizer: torch.optim.Optimizer | None = None
    times: list[float] = field(default_factory=list)
    first_step_s: float = float("nan")
    error: str | None = None


def mlp_params(width: int, layers: int, seed: int = 0) -> list[torch.Tensor]:
    """``layers`` (weight, bias) pairs of a width-``width`` MLP with fixed random gradients."""
    gen = torch.Generator().manual_seed(seed)
    params: list[torch.Tensor] = []
    for _ in range(layers):
        for shape in ((width, width), (width,)):
            p = torch.nn.Parameter(torch.randn(shape, generator=gen) * width**-0.5)
            p.grad = torch.randn(shape, generator=gen) * 1e-2
            params.append(p)
    return params


def _peer_candidates() -> list[Candidate]:
    """LAMB/Lion of optional third-party packages; any import failure just drops the rows."""
    peers: list[Candidate] = []
    try:
        from timm.optim.lamb import Lamb as TimmLamb
        from timm.optim.lion import Lion as TimmLion

        peers += [
            Candidate("timm Lamb", lambda ps: TimmLamb(ps, lr=1e-3, weight_decay=0.01)),
            Candidate("timm Lion", lambda ps: TimmLion(ps, lr=1e-4, weight_decay=0.1)),
        ]
    except Exception as exc:  # ImportError, or a broken torchvision beside this torch
        print(f"# timm not available: {type(exc).__name__}: {exc}"[:160], file=sys.stderr)
    try:
        import pytorch_optimizer as po

        peers += [
            Candidate("pytorch_optimizer Lamb", lambda ps: po.Lamb(ps, lr=1e-3, weight_decay=0.01)),
            Candidate("pytorch_optimizer Lion", lambda ps: po.Lion(ps, lr=1e-4, weight_decay=0.1)),
        ]
    except Exception as exc:
        print(f"# pytorch_optimizer not available: {type(exc).__name__}: {exc}"[:160],
              file=sys.stderr)
    try:
        import lion_pytorch

        peers.append(
            Candidate("lion-pytorch Lion", lambda ps: lion_pytorch.Lion(ps, lr=1e-4,
                                                                        weight_decay=0.1))
        )
    except Exception as exc:
        print(f"# lion-pytorch not available: {type(exc).__name__}: {exc}"[:160], file=sys.stderr)
    try:
        import schedulefree

        peers += [
            Candidate("schedulefree AdamW", lambda ps: _train(schedulefree.AdamWScheduleFree(ps))),
            Candidate("schedulefree SGD", lambda ps: _train(schedulefree.SGDScheduleFree(ps))),
        ]
    except Exception as exc:
        print(f"# schedulefree not available: {type(exc).__name__}: {exc}"[:160], file=sys.stderr)
    return peers


def _train(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The authors' schedule-free optimizers start in eval mode and refuse to step there."""
    optimizer.train()  # type: ignore[attr-defined]
    return optimizer


def _registry_builder(name: str) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    return lambda ps: optimizers.create(name, ps)


def _own_builder(
    cls: Callable[..., torch.optim.Optimizer], implementation: Implementation,
    foreach: bool | None = None,
) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    # the registry's defaults, as its rows use (Lion's weight decay differs from the class's)
    extra = {"weight_decay": 0.1} if cls is Lion else {}
    return lambda ps: cls(ps, implementation=implementation, foreach=foreach, **extra)


def candidates(skip: set[str]) -> list[Candidate]:
    """Every row: the baseline, the registry, optpilot's other implementations, the peers."""
    rows = [Candidate(BASELINE, lambda ps: torch.optim.AdamW(ps, fused=True))]
    rows += [Candidate(name, _registry_builder(name)) for name in optimizers.names()]
    for impl in ("reference", "fused"):
        rows.append(Candidate(f"optpilot LAMB {impl}", _own_builder(Lamb, impl)))
        rows.append(Candidate(f"optpilot Lion {impl}", _own_builder(Lion, impl)))
    # The default path's eager loop (what "lamb"/"lion" run where the C kernels cannot be built).
    rows.append(Candidate("optpilot LAMB loop", _own_builder(Lamb, "fast", foreach=False)))
    rows.append(Candidate("optpilot Lion loop", _own_builder(Lion, "fast", foreach=False)))
    for label, cls in (("SF-AdamW", ScheduleFreeAdamW), ("SF-SGD", ScheduleFreeSGD)):
        rows.append(Candidate(f"optpilot {label} reference", _own_builder(cls, "reference")))
        rows.append(Candidate(f"optpilot {label} loop", _own_builder(cls, "fast", foreach=False)))
    rows += _peer_candidates()
    return [row for row in rows if row.name not in skip]


def run(rows: list[Candidate], params: list[torch.Tensor], warmup: int, steps: int) -> None:
    for row in rows:
        try:
            row.optimizer = row.build(params)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}"
    live = [row for row in rows if row.optimizer is not None]
    for round_ in range(warmup + steps):
        shift = round_ % len(live)
        for row in live[shift:] + live[:shift]:
            if row.error is not None or row.optimizer is None:
                continue
            start = time.perf_counter()
            try:
                row.optimizer.step()
            except Exception as exc:
                row.error = f"{type(exc).__name__}: {exc}"
                continue
            elapsed = time.perf_counter() - start
            if round_ == 0:
                row.first_step_s = elapsed
            if round_ >= warmup:
                row.times.append(elapsed)
        gc.collect()


def report(rows: list[Candidate], params: list[torch.Tensor]) -> None:
    numel = sum(p.numel() for p in params)
    base = next(row for row in rows if row.name == BASELINE)
    base_ms = statistics.median(base.times) * 1e3
    print(f"\n{numel / 1e6:.2f}M fp32 parameters in {len(params)} tensors, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"median of {len(base.times)} interleaved steps\n")
    print(f"{'optimizer':28s} {'median ms':>10s} {'min ms':>8s} {'x AdamW fused':>14s} "
          f"{'1st step s':>11s}")
    print("-" * 75)
    ratios: dict[str, float] = {}
    for row in rows:
        if row.error is not None or not row.times:
            print(f"{row.name:28s} failed: {row.error}"[:120])
            continue
        med = statistics.median(row.times) * 1e3
        ratios[row.name] = med / base_ms
        print(f"{row.name:28s} {med:10.2f} {min(row.times) * 1e3:8.2f} "
              f"{med / base_ms:14.2f} {row.first_step_s:11.2f}")
    print()
    for name, target in TARGETS.items():
        if name in ratios:
            verdict = "ok" if ratios[name] <= target else "MISSED"
            print(f"target {name!r:24s} {ratios[name]:5.2f} <= {target:3.1f}  {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per optimizer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compile included)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 24 layers of width 128, 3 warm-up + 5 timed steps")
    parser.add_argument("--skip", default="", help="comma-separated row names to leave out")
    parser.add_argument("--only", default="",
                        help="comma-separated row names to keep (the baseline always runs)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    torch.set_num_threads(args.threads)
    width, steps = (128, min(args.steps, 5)) if args.quick else (816, args.steps)
    params = mlp_params(width, layers=24)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rows = candidates(skip)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only:
        rows = [row for row in rows if row.name in only or row.name == BASELINE]
    run(rows, params, args.warmup, steps)
    report(rows, params)


if __name__ == "__main__":
    main()
