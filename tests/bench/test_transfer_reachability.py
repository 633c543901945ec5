"""The transfer oracle's grid and subset search (bench/transfer_reachability.py)."""

from __future__ import annotations

import argparse

from bench.transfer import load_run, parse_args
from bench.transfer_reachability import LR_FACTORS, NEAREST_JOBS, grid
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

