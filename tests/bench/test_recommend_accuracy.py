"""The published-trainings benchmark: leave-one-out figures stay at or above their targets."""

from __future__ import annotations

import pytest

from bench.recommend_accuracy import TARGETS, Figures, main, run
from tuner.evidence import published_trainings


@pytest.fixture(scope="module")
def results() -> dict[str, Figures]:
    with_evidence, rules_alone = run("design")
    return {"evidence": Figures.of(with_evidence), "rules": Figures.of(rules_alone)}


@pytest.mark.parametrize("mode", ["evidence", "rules"])
def test_leave_one_out_figures_meet_their_targets(results: dict[str, Figures],
                                                   mode: str) -> None:
    figures = results[mode]
    top1, top3, lr = TARGETS[mode]
    assert figures.rows == len(published_trainings())
    assert figures.top1 >= top1, figures
    assert figures.top3 >= top3, figures
    assert figures.lr_first >= lr, figures


def test_report_prints_targets_tables_and_latency(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--repeats", "1"])
    out = capsys.readouterr().out
    assert "leave-one-out" in out and "evidence: top-1" in out and "rules: top-1" in out
    assert out.count("(target ") == 6
    assert "domain" in out and "kind" in out and "cnn_supervised" in out
    assert "latency of recommend(top_k=3)" in out and "p99" in out
