"""The tuning-efficiency benchmark's stored run and its ``--report`` mode (nothing is trained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.tuning_efficiency import (
    STORED_RUN,
    load_results,
    machine,
    main,
    parse_args,
    read_run,
    to_json,
)


def test_report_prints_the_stored_runs_summary(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--report", STORED_RUN, "--workloads", "rosenbrock,digits-mlp"])
    out = capsys.readouterr().out
    assert "(a) prior-guided" in out and "(b) TPE, wide" in out and "(c) random, wide" in out
    summary = out[out.index("(b) best@50"):]
    assert [line.split()[0] for line in summary.splitlines()[2:4]] == ["rosenbrock", "digits-mlp"]
    assert "targets met on" in summary
    assert "wall for" not in out  # nothing ran
    first = out.splitlines()[0]  # the stored run names its machine
    assert first.startswith(f"{STORED_RUN}: measured on ") and "unrecorded" not in first


def test_report_rejects_a_different_trial_budget() -> None:
    with pytest.raises(SystemExit, match="50 trials per study"):
        main(["--report", STORED_RUN, "--workloads", "rosenbrock", "--trials", "20"])


def _stored_copy(tmp_path: Path, machine_info: dict[str, str] | None) -> str:
    """The stored run as a plain JSON file, its machine replaced (None: not recorded)."""
    data = read_run(STORED_RUN)
    data["config"].pop("machine", None)
    if machine_info is not None:
        data["config"]["machine"] = machine_info
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("recorded", [{"cpu": "elsewhere", "cpu_capability": "AVX512",
                                       "torch": "0.0"}, None])
def test_reuse_refuses_a_run_from_another_machine_before_training(
    tmp_path: Path, recorded: dict[str, str] | None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _stored_copy(tmp_path, recorded)
    with pytest.raises(SystemExit, match="trial values differ between CPUs"):
        main(["--methods", "prior", "--reuse", path, "--workloads", "rosenbrock"])
    assert "studies" not in capsys.readouterr().err  # refused before any study started


def test_reuse_accepts_a_run_from_this_machine(tmp_path: Path) -> None:
    path = _stored_copy(tmp_path, machine())
    args = parse_args(["--methods", "prior", "--reuse", path, "--workloads", "rosenbrock"])
    reused = load_results(path, args, skip={"prior"}, same_machine=True)
    assert {r.task.method for r in reused} == {"tpe", "random"}
    assert len(reused) == 2 * args.seeds


def test_output_records_the_machine() -> None:
    args = parse_args(["--workloads", "rosenbrock"])
    assert to_json(args, [], [], 0.0)["config"]["machine"] == machine()
    assert set(machine()) == {"cpu", "cpu_capability", "torch"}
