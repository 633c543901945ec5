"""The oracle bound of ``bench/target_reachability.py``: its search and grid (nothing trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import target_reachability as reach
from bench.tuning_efficiency import STORED_RUN, read_run

# 4 configurations x 3 seeds; lower is better.
VALUES = [
    [0.50, 0.50, 0.50],
    [0.40, 0.90, 0.90],
    [0.90, 0.40, 0.90],
    [0.90, 0.90, 0.45],
]


def test_median_of_bests_takes_each_seeds_best_then_the_median() -> None:
    assert reach.median_of_bests(VALUES, [0]) == 0.50
    assert reach.median_of_bests(VALUES, [1, 2]) == 0.40  # seeds: 0.40, 0.40, 0.90
    assert reach.median_of_bests(VALUES, range(4)) == 0.40  # seeds: 0.40, 0.40, 0.45


def test_oracle_searches_every_subset() -> None:
    value, chosen, exhaustive = reach.oracle(VALUES, 2)
    assert exhaustive and value == 0.40
    assert sorted(chosen) == [1, 2]  # the best single one (0) is not in the best pair
    assert reach.oracle(VALUES, 1)[:2] == (0.50, [0])


def test_oracle_falls_back_to_greedy_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reach, "EXHAUSTIVE_MAX", 1)
    value, chosen, exhaustive = reach.oracle(VALUES, 2)
    assert not exhaustive
    # greedy starts from the best single configuration and misses the best pair
    assert chosen[0] == 0 and value == 0.50 == reach.median_of_bests(VALUES, chosen)


def test_grid_spans_the_prior_candidates_around_their_defaults() -> None:
    configs = reach.grid("diabetes-mlp")  # candidates: sgd_momentum, adam, adamw
    by_optimizer = {name: [dict(hps) for o, hps in configs if o == name]
                    for name in ("sgd_momentum", "adam", "adamw")}
    assert [len(v) for v in by_optimizer.values()] == [4 * 2, 4 * 3, 4 * 3 * 3]
    adamw = by_optimizer["adamw"]
    assert sorted({c["weight_decay"] for c in adamw}) == [0.1, pytest.approx(0.3), 1.0]
    assert sorted({c["beta1"] for c in adamw}) == [0.9, 0.99, 0.998]
    lrs = sorted({c["lr"] for c in adamw})
    assert lrs[2] / lrs[0] == pytest.approx(9) and lrs[3] / lrs[2] == pytest.approx(3)


def test_refuses_a_stored_run_from_another_machine(tmp_path: Path) -> None:
    data = read_run(STORED_RUN)
    data["config"]["machine"] = {"cpu": "elsewhere", "cpu_capability": "AVX512", "torch": "0"}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit):
        reach.main(["--workload", "diabetes-mlp", "--stored", str(path)])
