"""Learning-rate sweep on the built-in workloads: where is each optimizer's best lr, and how far is
it from the prior's default?

Every (workload, optimizer) pair trains at the registry defaults except ``lr`` (``aux_lr`` for
Muon follows ``lr``), on a half-decade grid, with one fixed training seed per run (the trial
runner's common random numbers) and the workload's default budget. Printed per workload: each
optimizer's best lr and value, the prior's lr default for it (``tuner.prior.recommend`` on the
workload's own task) and their ratio, with ``*`` on the prior's top-3 candidates. This is the
evidence behind the prior's small-model lr rule (``tuner.rules``) and the tuner's lr headroom.

    python -m bench.lr_sweep                                   # every workload, every optimizer
    python -m bench.lr_sweep --workloads digits-mlp --optimizers adam,sgd_momentum --seeds 2
    python -m bench.lr_sweep --optimizers adamw --seeds 5 --weight-decay 0.01   # vs the default
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import optimizers
from bench.tuning_efficiency import init_worker
from tuner.prior import recommend
from tuner.workloads import TrialConfig, get_workload, workload_names

GRID = tuple(10 ** (e / 2) for e in range(-10, 3))  # 1e-5 .. 10 in half decades


@dataclass(frozen=True)
class Point:
    workload: str
    optimizer: str
    lr: float
    seed: int
    weight_decay: float | None = None  # None: the registry default


def final_value(workload: str, optimizer: str, hyperparameters: dict[str, float],
                seed: int) -> float:
    """The workload's final value for one configuration (inf when it diverged or failed)."""
    try:
        value = float(get_workload(workload).run(
            TrialConfig(optimizer, hyperparameters, seed=seed), lambda epoch, value: None))
    except ValueError:  # a hyperparameter outside the optimizer's accepted range
        return math.inf
    return value if math.isfinite(value) else math.inf


def evaluate(point: Point) -> float:
    """The workload's final value at this point (inf when it diverged or failed)."""
    hps = dict(optimizers.get(point.optimizer).defaults)
    hps["lr"] = point.lr
    if point.weight_decay is not None and "weight_decay" in hps:
        hps["weight_decay"] = point.weight_decay
    if "aux_lr" in hps:
        hps["aux_lr"] = point.lr
    return final_value(point.workload, point.optimizer, hps, point.seed)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--workloads", default=",".join(workload_names()))
    p.add_argument("--optimizers", default=",".join(optimizers.names()))
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1; the median is reported")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="train every optimizer that has weight decay with this value")
    p.add_argument("--output", default=None, help="write every point as JSON here")
    args = p.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    names = [o for o in args.optimizers.split(",") if o]
    points = [Point(w, o, lr, s, args.weight_decay) for w in workloads for o in names
              for lr in GRID for s in range(args.seeds)]
    started = time.monotonic()
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_worker) as pool:
        values = list(pool.map(evaluate, points, chunksize=4))
    results = dict(zip(points, values, strict=True))
    rows = []
    for w in workloads:
        task = get_workload(w).task
        rec = recommend(task, top_k=len(optimizers.names()))
        prior = {c.optimizer: c for c in rec.candidates}
        top = [c.optimizer for c in rec.candidates[:3]]
        print(f"\n{w}  ({task.num_parameters} parameters, batch {task.batch_size})")
        print(f"  {'optimizer':14s}{'best lr':>10s}{'value':>12s}{'prior lr':>10s}{'ratio':>8s}"
              f"   values over the grid {GRID[0]:.0e}..{GRID[-1]:.0e}")
        per: list[tuple[float, str]] = []
        for o in names:
            curve = [statistics.median(results[Point(w, o, lr, s, args.weight_decay)]
                                       for s in range(args.seeds))
                     for lr in GRID]
            best = min(range(len(GRID)), key=lambda i: curve[i])
            lr_hp = prior[o].hyperparameters.get("lr") if o in prior else None
            lr_prior = lr_hp.default if lr_hp is not None else math.nan
            ratio = GRID[best] / lr_prior
            per.append((curve[best], o))
            mark = "*" if o in top else " "
            print(f" {mark}{o:14s}{GRID[best]:10.2g}{curve[best]:12.4g}{lr_prior:10.2g}"
                  f"{ratio:8.2g}   " + " ".join("  x  " if math.isinf(v) else f"{v:.3g}"
                                                 for v in curve))
            rows.append({"workload": w, "optimizer": o, "best_lr": GRID[best],
                         "best_value": curve[best], "prior_lr": lr_prior, "top3": o in top,
                         "curve": [v if math.isfinite(v) else None for v in curve]})
        per.sort()
        print("  ranking: " + ", ".join(f"{o} {v:.4g}" for v, o in per[:5]))
    print(f"\n{len(points)} runs in {time.monotonic() - started:.0f}s on {args.jobs} processes",
          file=sys.stderr)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"grid": GRID, "seeds": args.seeds, "weight_decay": args.weight_decay,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
