"""The transfer oracle's grid and subset search (bench/transfer_reachability.py)."""

from __future__ import annotations

import argparse

from bench.transfer import load_run, parse_args
from bench.transfer_reachability import LR_FACTORS, NEAREST_JOBS, grid, oracle
from tuner.evidence.history import JobOutcome

STORED = "bench/results/transfer_tpe_history.json.gz"


def _outcomes() -> list[JobOutcome]:
    args: argparse.Namespace = parse_args(["--report", STORED])
    jobs, _ = load_run(STORED, args, skip=set())
    return [j.outcome for j in jobs]


def test_the_grid_holds_the_neighbours_configurations_on_every_rung_and_its_own_job_last() -> None:
    points = grid("mlp-x4", _outcomes())
    history = [p for p in points if not p.own]
    assert {p.job for p in history} <= {"zoo-mlp-x4-b64-half", "zoo-mlp-x1", "zoo-mlp-x16"}
    assert "zoo-mlp-x4" not in {p.job for p in history}  # never the held-out task's own job
    assert len({p.job_rank for p in history}) <= NEAREST_JOBS
    assert {p.factor for p in history} == set(LR_FACTORS)
    assert [p.job for p in points if p.own] == ["zoo-mlp-x4"] * len(LR_FACTORS)
    assert points[-1].own


def test_the_oracle_picks_the_subset_with_the_best_median_of_per_seed_bests() -> None:
    # One good seed each for the first three; the last is fair on every seed.
    values = [[0.4, 2.0, 2.0], [2.0, 0.4, 2.0], [2.0, 2.0, 0.4], [0.9, 0.9, 0.9]]
    value, chosen = oracle(values, 2)
    assert value == 0.4 and 3 not in chosen
    value, chosen = oracle(values, 1)
    assert chosen == (3,) and value == 0.9
