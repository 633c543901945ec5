"""Can any fixed set of trials reach the tuning-efficiency target on a workload? An oracle bound.

``bench/tuning_efficiency.py`` asks the prior-guided study (a) to come within 2% of plain TPE's
median 50-trial best (b) after 5 trials, and to reach it within 15. When (a) misses, is it the
prior, or is the target out of reach of *any* short list of configurations? This trains a grid
around the prior's top-3 candidates on the benchmark's seeds (one training seed per seed, like
the studies' trials) and prints, against (b)'s target from the stored run:

* the best single configuration (median over seeds);
* the oracle best-of-k: the k grid points that, chosen *after* seeing every value, make the
  median of the per-seed bests smallest (exhaustive search; an upper bound on any k-trial warm
  start drawn from the grid);
* the median of the per-seed bests over the whole grid: no subset of the grid, of any size,
  does better.

Grid, for each of the top-3 candidates of ``tuner.prior.recommend(workload.task)``: lr at the
prior's default x{1/9, 1/3, 1, 3}; for the Adam family, beta1 in {0.9, 0.99, 0.998} and, for the
decoupled ones (default weight decay >= 0.01), weight decay x{1, 3, 10} of the default (at most
1); for SGD with momentum, momentum in {0.75, 0.9}. Everything else at the prior's default.

    python -m bench.target_reachability --workload diabetes-mlp     # ~1 min on 2 processes
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import optimizers
from bench.lr_sweep import final_value
from bench.tuning_efficiency import (
    GOAL_AT,
    GOAL_GAP,
    GOAL_TRIALS,
    STORED_RUN,
    init_worker,
    load_results,
    parse_args,
    summarize,
)
from tuner.prior import recommend
from tuner.workloads import get_workload, workload_names

Config = tuple[str, tuple[tuple[str, float], ...]]  # optimizer, sorted hyperparameters

LR_FACTORS = (1 / 9, 1 / 3, 1.0, 3.0)
BETA1S = (0.9, 0.99, 0.998)
WEIGHT_DECAY_FACTORS = (1.0, 3.0, 10.0)
SGD_MOMENTA = (0.75, 0.9)
EXHAUSTIVE_MAX = 5_000_000  # subsets searched exactly; above this, greedily


def grid(workload: str) -> list[Config]:
    configs: list[Config] = []
    for cand in recommend(get_workload(workload).task, top_k=3).candidates:
        base = dict(optimizers.get(cand.optimizer).defaults)
        base.update({hp: prior.default for hp, prior in cand.hyperparameters.items()})
        axes: list[list[tuple[str, float]]] = [[("lr", base["lr"] * f) for f in LR_FACTORS]]
        if "beta1" in base:
            axes.append([("beta1", b) for b in BETA1S])
            if base.get("weight_decay", 0.0) >= 0.01:
                axes.append([("weight_decay", min(1.0, base["weight_decay"] * f))
                             for f in WEIGHT_DECAY_FACTORS])
        elif "momentum" in base:
            axes.append([("momentum", m) for m in SGD_MOMENTA])
        for point in itertools.product(*axes):
            configs.append((cand.optimizer, tuple(sorted({**base, **dict(point)}.items()))))
    return configs


def evaluate(job: tuple[str, Config, int]) -> float:
    workload, (optimizer, hps), seed = job
    return final_value(workload, optimizer, dict(hps), seed)


def median_of_bests(values: Sequence[Sequence[float]], chosen: Sequence[int]) -> float:
    """Median over seeds of the best (smallest) value among the ``chosen`` configurations."""
    seeds = len(values[0])
    return float(statistics.median(min(values[i][s] for i in chosen) for s in range(seeds)))


def oracle(values: Sequence[Sequence[float]], k: int) -> tuple[float, list[int], bool]:
    """The k configurations with the smallest median of per-seed bests: (value, indices,
    exhaustive). Exhaustive up to ``EXHAUSTIVE_MAX`` subsets, else greedy."""
    n = len(values)
    k = min(k, n)
    if math.comb(n, k) <= EXHAUSTIVE_MAX:
        best = min(itertools.combinations(range(n), k),
                   key=lambda chosen: median_of_bests(values, chosen))
        return median_of_bests(values, best), list(best), True
    chosen: list[int] = []
    for _ in range(k):
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(min(rest, key=lambda i: median_of_bests(values, [*chosen, i])))
    return median_of_bests(values, chosen), chosen, False


def _label(config: Config) -> str:
    optimizer, hps = config
    shown = {k: v for k, v in hps if k in ("lr", "beta1", "momentum", "weight_decay")}
    return optimizer + " " + " ".join(f"{k}={v:.3g}" for k, v in shown.items())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--workload", required=True, choices=workload_names())
    p.add_argument("--k", type=int, default=GOAL_AT, help=f"oracle subset size (default {GOAL_AT})")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--stored", default=STORED_RUN, help="tuning_efficiency run with (b)")
    args = p.parse_args(argv)
    run_args = parse_args(["--workloads", args.workload])
    stored = load_results(args.stored, run_args, skip=set(), same_machine=True)
    summary = summarize(args.workload, stored, run_args.trials)
    if summary.direction != "minimize":
        p.error("only workloads that minimise their metric are supported")
    target, seeds = summary.target, summary.n_seeds
    configs = grid(args.workload)
    jobs = [(args.workload, c, s) for c in configs for s in range(seeds)]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_worker) as pool:
        flat = list(pool.map(evaluate, jobs, chunksize=4))
    values = [flat[i * seeds:(i + 1) * seeds] for i in range(len(configs))]

    goal_at = target * (1 + GOAL_GAP)
    print(f"{args.workload}: {len(configs)} configurations x {seeds} seeds; (b)'s median "
          f"50-trial best {target:.4f}: goal {goal_at:.4f} after {GOAL_AT} trials, "
          f"{target:.4f} within {GOAL_TRIALS}")
    single = min(range(len(configs)), key=lambda i: statistics.median(values[i]))
    print(f"  best single configuration   {statistics.median(values[single]):.4f}   "
          f"{_label(configs[single])}")
    value, chosen, exhaustive = oracle(values, args.k)
    print(f"  oracle best-of-{args.k} ({'exhaustive' if exhaustive else 'greedy'})"
          f"{value:>11.4f}   {'reaches' if value <= goal_at else 'misses'} {goal_at:.4f}")
    for i in chosen:
        print(f"      {_label(configs[i])}")
    whole = median_of_bests(values, range(len(configs)))
    print(f"  whole grid (per-seed bests) {whole:.4f}   "
          f"{'reaches' if whole <= target else 'misses'} {target:.4f}")


if __name__ == "__main__":
    main()
