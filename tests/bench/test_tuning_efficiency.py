"""The tuning-efficiency benchmark's stored run and its ``--report`` mode (nothing is trained)."""

from __future__ import annotations

import pytest

from bench.tuning_efficiency import STORED_RUN, main


def test_report_prints_the_stored_runs_summary(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--report", STORED_RUN, "--workloads", "rosenbrock,digits-mlp"])
    out = capsys.readouterr().out
    assert "(a) prior-guided" in out and "(b) TPE, wide" in out and "(c) random, wide" in out
    summary = out[out.index("(b) best@50"):]
    assert [line.split()[0] for line in summary.splitlines()[2:4]] == ["rosenbrock", "digits-mlp"]
    assert "targets met on" in summary
    assert "wall for" not in out  # nothing ran


def test_report_rejects_a_different_trial_budget() -> None:
    with pytest.raises(SystemExit, match="50 trials per study"):
        main(["--report", STORED_RUN, "--workloads", "rosenbrock", "--trials", "20"])
