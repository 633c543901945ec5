"""docker-compose.yml and the Dockerfile: what can be checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_has_the_design_services(compose: dict[str, Any]) -> None:
    assert {"postgres", "migrate", "api", "worker", "dashboard"} <= set(compose["services"])
    assert "healthcheck" in compose["services"]["postgres"]


def test_optpilot_commands_parse_with_the_cli(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name in ("migrate", "api", "worker"):
        command = compose["services"][name]["command"]
        assert command[0] == "optpilot", name
        parser.parse_args(command[1:])  # SystemExit on an unknown flag


def test_api_serves_without_local_workers_and_workers_reserve_gpus(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = build_parser().parse_args(services["api"]["command"][1:])
    assert api.workers == 0 and api.host == "0.0.0.0"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == \
        "service_completed_successfully"


def test_environment_variables_are_settings(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    known = {"DATABASE_URL"} | {f"OPTPILOT_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    pg = compose["services"]["postgres"]["environment"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}" \
        in env["DATABASE_URL"]
    dashboard = " ".join(compose["services"]["dashboard"]["command"])
    assert f"@postgres:5432/{pg['POSTGRES_DB']}" in dashboard


def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for path in ("optimizers", "tuner", "service", "pyproject.toml"):
        assert re.search(rf"^COPY .*{path}", text, re.M), path
    cmd = re.search(r'^CMD \[(.*)\]$', text, re.M)
    assert cmd is not None
    argv = [part.strip().strip('"') for part in cmd.group(1).split(",")]
    assert argv[0] == "optpilot"
    assert build_parser().parse_args(argv[1:]).command == "serve"


def test_bootstrap_runs_pip_only_when_the_install_is_not_current(tmp_path: Path) -> None:
    """scripts/bootstrap (behind scripts/serve and scripts/test) against a stand-in venv whose
    python records its calls: pip runs once for three starts from the same files."""
    import subprocess

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "OPTPILOT_VENV": str(venv)}
    for extras in ("dev", "", "dev"):  # serve after test needs nothing more
        subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap"), *([extras] if extras else [])],
                       check=True, env=env)
    assert calls.read_text().count("pip install") == 1
    (venv / ".optpilot-install").write_text("stale\n")  # pyproject.toml changed since
    subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap")], check=True, env=env)
    assert calls.read_text().count("pip install") == 2
