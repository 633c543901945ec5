"""The ``optpilot`` command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import optuna
import pytest

import optimizers
from service.cli import build_parser, database_url, main
from tuner.workloads import workload_names


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_optimizers_json_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "optimizers", "--json")
    assert code == 0
    assert [o["name"] for o in json.loads(out)] == list(optimizers.names())


def test_workloads_table_names_every_workload(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "workloads")
    assert code == 0
    for name in workload_names():
        assert name in out


def test_recommend_prints_ranked_candidates_with_rationale(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "recommend", "--family", "transformer", "--params", "1.2e8",
                       "--batch-size", "512", "--memory-gb", "24")
    assert code == 0
    assert out.lstrip().startswith("1. adamw")
    assert "transformer family" in out and "fits the budget" in out


def test_recommend_json_matches_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "recommend", "--family", "rnn", "--params", "2_000_000",
                       "--top-k", "2", "--json")
    body = json.loads(out)
    assert code == 0 and len(body["candidates"]) == 2
    assert body["candidates"][0]["optimizer"] == "rmsprop"
    assert body["task"]["num_parameters"] == 2_000_000


def test_recommend_shows_published_evidence(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "recommend", "--family", "cnn", "--params", "2.5e7",
                       "--layers", "50", "--dataset-size", "1281167", "--batch-size", "256")
    assert code == 0
    assert out.lstrip().startswith("1. sgd_momentum")
    assert "closest published: " in out
    assert "evidence (published, similarity " in out and "ResNet-50: sgd_momentum lr 0.1" in out
    code, alone, _ = run(capsys, "recommend", "--family", "cnn", "--params", "2.5e7",
                         "--layers", "50", "--dataset-size", "1281167", "--batch-size", "256",
                         "--no-evidence")
    assert code == 0 and "evidence (" not in alone and "closest published" not in alone


def test_recommend_takes_fine_tuning_kinds_and_frozen_parameters(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "recommend", "--family", "transformer", "--params", "4e6",
                       "--fine-tuning", "--frozen-params", "7e9", "--devices", "8",
                       "--memory-gb", "80", "--precision", "bf16", "--json")
    body = json.loads(out)
    assert code == 0
    assert body["task"]["fine_tuning"] is True
    assert body["task"]["frozen_parameters"] == 7_000_000_000
    first = body["candidates"][0]
    assert first["optimizer"] == "adamw"
    assert any(r.startswith("parameter-efficient fine-tuning") for r in first["rationale"])
    assert any("sharded over 8 devices" in r for r in first["rationale"])
    code, out, _ = run(capsys, "recommend", "--family", "transformer", "--params", "1.1e8",
                       "--fine-tuning", "full", "--json")
    assert code == 0 and json.loads(out)["task"]["fine_tuning"] == "full"


@pytest.mark.parametrize(("argv", "message"), [
    (["recommend", "--family", "lstm", "--params", "1e6"], "model_family:"),
    (["recommend", "--family", "mlp", "--params", "1e6", "--frozen-params", "-1"],
     "frozen_parameters:"),
    (["recommend", "--family", "mlp", "--params", "0"], "num_parameters:"),
    (["recommend", "--family", "mlp", "--params", "1e6", "--memory-gb", "nan"],
     "memory_budget_gb:"),
    (["recommend", "--family", "mlp", "--params", "1e6", "--top-k", "99"], "top_k"),
    (["recommend", "--family", "mlp", "--params", "1e6", "--training-steps", "0"],
     "training_steps:"),
    (["tune", "--workload", "no-such-workload"], "unknown"),
    (["tune", "--workload", "rosenbrock", "--trials", "0"], "--trials"),
    (["tune", "--workload", "rosenbrock", "--optimizers", "adamx"], "adamx"),
])
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                          message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_unparseable_count_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["recommend", "--family", "mlp", "--params", "1.5"])
    assert exc.value.code == 2
    assert "whole number" in capsys.readouterr().err


def test_unknown_fine_tuning_kind_is_an_argparse_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["recommend", "--family", "mlp", "--params", "1e6", "--fine-tuning", "lora"])
    assert exc.value.code == 2
    assert "full or parameter_efficient" in capsys.readouterr().err


def test_recommend_shows_the_schedule_and_takes_the_training_horizon(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "recommend", "--family", "mlp", "--params", "5e6", "--top-k", "3")
    assert code == 0
    assert "schedule: cosine: 5% warm-up, then cosine decay to 0" in out
    assert "lr is the peak of its schedule" in out
    code, out, _ = run(capsys, "recommend", "--family", "mlp", "--params", "5e6",
                       "--training-steps", "unknown", "--json")
    candidates = json.loads(out)["candidates"]
    assert candidates[0]["optimizer"] == "schedulefree_adamw"
    assert candidates[0]["schedule"]["name"] == "none"
    assert {c["schedule"]["name"] for c in candidates[1:]} == {"wsd"}
    code, out, _ = run(capsys, "recommend", "--family", "mlp", "--params", "5e6",
                       "--training-steps", "2e4", "--json")
    assert json.loads(out)["task"]["training_steps"] == 20_000
    with pytest.raises(SystemExit) as exc:
        main(["recommend", "--family", "mlp", "--params", "1e6", "--training-steps", "forever"])
    assert exc.value.code == 2
    assert "whole number of steps or 'unknown'" in capsys.readouterr().err


def test_tune_runs_exactly_the_budget_and_reports_json(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    code, out, _ = run(capsys, "tune", "--workload", "rosenbrock", "--trials", "6", "--seed", "1",
                       "--storage", storage, "--study-name", "cli", "--json")
    body = json.loads(out)
    assert code == 0
    assert body["completed"] + body["pruned"] + body["failed"] == 6
    assert body["best_optimizer"] in body["per_optimizer"]
    study = optuna.load_study(study_name="cli", storage=storage)
    assert len(study.trials) == 6
    assert study.best_value == pytest.approx(body["best_value"])


def test_tune_prints_best_configuration_ready_to_paste(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tune", "--workload", "rosenbrock", "--trials", "3",
                       "--optimizers", "adam")
    assert code == 0
    assert "optimizers.create('adam', model.parameters(), lr=" in out
    assert "schedule constant: a constant lr, no warm-up" in out  # Rosenbrock keeps it
    assert "Per-optimizer summary" in out


def test_database_url_accepts_paths_and_urls(tmp_path: Path) -> None:
    assert database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"


def test_service_commands_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--port", "9000", "--workers", "2", "--db", "a.db"])
    assert (args.port, args.workers, args.db) == (9000, 2, "a.db")
    args = parser.parse_args(["worker", "--devices", "cuda:0,cuda:1", "--grace-period", "9"])
    assert args.devices == "cuda:0,cuda:1" and args.grace_period == 9
    assert parser.parse_args(["db", "upgrade"]).action == "upgrade"


def test_version_and_a_bare_command_list_what_there_is(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("optpilot ")
    code, _, err = run(capsys)
    assert code == 2
    for command in ("recommend", "tune", "serve", "worker", "db", "jobs", "results", "report"):
        assert command in err


@pytest.mark.parametrize(("argv", "defaults"), [
    (["serve", "--help"], ["(default: 8000)", "(default: 127.0.0.1)", "(default: 30.0)"]),
    (["tune", "--help"], ["(default: 30)", "(default: 0)", "(default: median)"]),
    (["recommend", "--help"], ["(default: 3)"]),
])
def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str], argv: list[str],
                                 defaults: list[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in defaults:
        assert default in out


def test_a_bad_tune_argument_draws_no_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "tune", "--workload", "rosenbrock", "--optimizers", "adamx")
    assert code == 2 and "adamx" in err and out == ""


def test_serve_on_a_busy_port_is_one_error_line_and_starts_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "serve", "--port", str(port), "--workers", "1",
                             "--db", str(tmp_path / "serve.db"))
    assert code == 2
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "API on" not in err
    assert not (tmp_path / "serve.db").exists()  # nothing prepared, no worker started


def test_db_current_creates_and_changes_nothing(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "optpilot.db"
    code, _, err = run(capsys, "db", "current", "--db", str(missing))
    assert code == 2 and "no database" in err
    assert not missing.parent.exists()
    path = tmp_path / "optpilot.db"
    assert main(["db", "upgrade", "--db", str(path)]) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    code, out, _ = run(capsys, "db", "current", "--db", str(path))
    assert code == 0 and "revision 0" in out
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_results_refuses_an_empty_size_range(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "results", "--min-params", "1e6", "--max-params", "1e3",
                       "--url", "http://127.0.0.1:9")
    assert code == 2 and "--min-params" in err
