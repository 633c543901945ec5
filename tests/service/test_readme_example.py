"""The README's "tune your own training code" example runs as written, against a real API
process on a temporary SQLite database (its URL injected through ``OPTPILOT_URL``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.client import OptpilotClient
from tests.service.processes import ROOT, Api

MARKER = "<!-- example: own-model -->"


def readme_example(marker: str = MARKER) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(re.escape(marker) + r"\s*```python\n(.*?)^```", text, re.S | re.M)
    assert found, f"README.md has no python block after {marker!r}"
    return found.group(1)


def test_the_example_is_marked_and_reads_the_url_from_the_environment() -> None:
    code = readme_example()
    compile(code, "README.md example", "exec")
    assert 'os.environ.get("OPTPILOT_URL", "http://127.0.0.1:8000")' in code
    assert "client.trials(" in code and "trial.report(" in code and "trial.prune()" in code


@pytest.mark.slow
def test_the_readme_example_tunes_its_own_model(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example(), encoding="utf-8")
    api = Api(f"sqlite:///{tmp_path / 'optpilot.db'}", tmp_path / "api.log")
    api.start()
    try:
        env = {**os.environ, "OPTPILOT_URL": api.base, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(ROOT)}
        env.pop("OPTPILOT_API_KEY", None)
        run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        with OptpilotClient(api.base, api_key="") as client:
            (job,) = client.list_jobs()["items"]
            trials = client.job_trials(job["id"])
            results = client.results()["items"]
    finally:
        api.stop()
    assert job["workload"] is None and job["task"]["task_type"] == "regression"
    assert job["status"] == "completed"
    assert job["progress"]["finished"] == job["n_trials"] == len(trials) == 8
    assert job["progress"]["completed"] >= 1 and job["best"]["value"] < 1.0
    assert all(len(t["intermediate_values"]) >= 1 or t["state"] == "fail" for t in trials)
    assert f"best val_loss {job['best']['value']:.4f}" in run.stdout
    assert [r["job_id"] for r in results] == [job["id"]]


def test_the_python_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tour's snippet runs on its own (every name it uses is defined in it), with 1 trial
    instead of 30 and its database in a temporary directory."""
    code = readme_example("<!-- example: tour -->")
    assert "n_trials=30" in code and '"sqlite:///tuning.db"' in code
    code = code.replace("n_trials=30", "n_trials=1").replace(
        '"sqlite:///tuning.db"', repr(f"sqlite:///{tmp_path / 'tuning.db'}"))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md tour", "exec"), {"__name__": "tour"})
    assert (tmp_path / "tuning.db").exists()
