"""Where the rules were wrong and moving history between servers (SQLite and PostgreSQL), through
REST, the CLI and the Python client: ``GET /v1/insights/rules``, ``GET``/``POST /v1/history``,
``optpilot insights``, ``optpilot history export|import``. An export imported into a fresh
database gives the same export; a second import adds nothing; a malformed file or body names
its line and field and changes nothing; a job id already there is never added twice."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.cli import main
from service.client import OptpilotClient, ValidationFailed
from service.core.db import upgrade
from service.core.models import HistoryEntry, Job, new_id, utcnow
from service.jobs.history import import_outcomes
from tests.service.conftest import _postgres_schema, settings_for
from tests.service.jobrun import live_server
from tests.service.test_history import _run_ask_tell_job
from tests.tuner.test_insights import CNN, SMALL, job
from tuner.evidence.export import dump_line
from tuner.evidence.history import JobOutcome

NDJSON = {"Content-Type": "application/x-ndjson"}


def team_a() -> list[JobOutcome]:
    """Small MLPs won by Adam at 2x and 8x the rules' lr (small_problem's pick, SGD with
    momentum, lost) and once by its pick; two CNNs won by convolutional's pick."""
    return [job("a-s1", SMALL, "adam", 2.0, namespace="team-a"),
            job("a-s2", SMALL, "adam", 8.0, namespace="team-a"),
            job("a-s3", SMALL, "sgd_momentum", 0.5, namespace="team-a"),
            job("a-c1", CNN, "sgd_momentum", 1.0, loser="adam", namespace="team-a"),
            job("a-c2", CNN, "sgd_momentum", 1.0, loser="adam", namespace="team-a")]


def team_b() -> list[JobOutcome]:
    return [job("b-c1", CNN, "adam", 3.0, namespace="team-b")]


def lines(outcomes: list[JobOutcome]) -> str:
    return "".join(f"{dump_line(o)}\n" for o in outcomes)


@pytest.fixture
def api(migrated_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(migrated_url))) as client:
        yield client


def _sessions(client: TestClient) -> sessionmaker[Session]:
    app: FastAPI = client.app  # type: ignore[assignment]
    factory: sessionmaker[Session] = app.state.sessionmaker
    return factory


def _history_ids(client: TestClient) -> list[str]:
    with _sessions(client)() as session:
        return sorted(session.scalars(sa.select(HistoryEntry.job_id)))


def _post(client: TestClient, body: str | bytes) -> Any:
    return client.post("/v1/history", content=body, headers=NDJSON)


@pytest.fixture
def fresh_url(request: pytest.FixtureRequest, database_url: str,
              tmp_path: Path) -> Iterator[str]:
    """A second migrated database of the same kind (another server's)."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
        upgrade(url)
        yield url
        return
    with _postgres_schema(request.getfixturevalue("postgres_database_url")) as url:
        upgrade(url)
        yield url


# -- insights over REST -----------------------------------------------------------------------


def test_insights_list_the_rule_whose_pick_lost_first_per_namespace(api: TestClient) -> None:
    assert _post(api, lines(team_a() + team_b())).json() == {"added": 6, "skipped": 0}
    answer = api.get("/v1/insights/rules", params={"namespace": "team-a"})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert (data["namespace"], data["jobs"], data["ignored"]) == ("team-a", 5, 0)
    first = data["rules"][0]
    assert first == {"rule": "small_problem", "top_pick": "sgd_momentum", "jobs": 3,
                     "decided": 3, "top_pick_won": pytest.approx(1 / 3), "top_pick_tried": 3,
                     "median_lr_ratio": pytest.approx(2.0), "lr_jobs": 3,
                     "examples": ["a-s2", "a-s1", "a-s3"]}
    assert data["prior"]["top_pick_won"] == pytest.approx(0.6)
    mentioned = {i for row in data["rules"] for i in row["examples"]}
    assert mentioned <= {o.job_id for o in team_a()}, "another namespace's jobs stay out"
    other = api.get("/v1/insights/rules", params={"namespace": "team-b"}).json()
    cnn = next(r for r in other["rules"] if r["rule"] == "convolutional")
    assert (other["jobs"], cnn["jobs"], cnn["top_pick_won"], cnn["examples"]) == (
        1, 1, 0.0, ["b-c1"])
    empty = api.get("/v1/insights/rules").json()  # the default namespace
    assert empty["namespace"] == "default" and empty["jobs"] == 0


@pytest.mark.parametrize("query", [{"namespace": "Team-A"}, {"namespace": ""},
                                   {"namespace": "a" * 65}, {"limit": "5"}])
def test_a_bad_insights_query_is_a_422_naming_the_parameter(api: TestClient,
                                                            query: dict[str, str]) -> None:
    answer = api.get("/v1/insights/rules", params=query)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == f"query.{next(iter(query))}"
    assert api.get("/v1/history", params=query).status_code == 422


# -- export and import over REST --------------------------------------------------------------


def test_an_export_imported_into_a_fresh_database_round_trips(api: TestClient,
                                                             fresh_url: str) -> None:
    _post(api, lines(team_a() + team_b()))
    local = _run_ask_tell_job(api, 6, namespace="team-c")  # a job of this server's own
    exported = api.get("/v1/history")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    text = exported.text
    assert [json.loads(x)["job_id"] for x in text.splitlines()] == [
        *(o.job_id for o in team_a() + team_b()), local], "oldest first"
    mine = json.loads(text.splitlines()[-1])
    assert mine["finished_at"] and mine["best_schedule"]["name"]
    only_b = api.get("/v1/history", params={"namespace": "team-b"}).text
    assert only_b == lines(team_b())
    with TestClient(create_app(settings_for(fresh_url))) as fresh:
        assert _post(fresh, text).json() == {"added": 7, "skipped": 0}
        assert fresh.get("/v1/history").text == text
        assert _post(fresh, text).json() == {"added": 0, "skipped": 7}
        assert len(_history_ids(fresh)) == 7
        assert fresh.get("/v1/insights/rules", params={"namespace": "team-a"}).json() == \
            api.get("/v1/insights/rules", params={"namespace": "team-a"}).json()
        with _sessions(fresh)() as session:
            origins = set(session.scalars(sa.select(HistoryEntry.origin)))
        assert origins == {"imported"}


def _bad_lines() -> list[tuple[str, str, str]]:
    good = dump_line(team_a()[0])
    data = json.loads(good)
    missing = {k: v for k, v in data.items() if k != "metric"}
    return [
        ('{"job_id": "x", "task"', "body.2", "json_invalid"),
        (json.dumps({**missing, "job_id": "other"}), "body.2.metric", "missing"),
        (json.dumps({**data, "job_id": "other", "namespace": "Team A"}), "body.2.namespace",
         "value_error"),
        (good, "body.2.job_id", "duplicate"),
    ]


@pytest.mark.parametrize(("bad", "field", "kind"), _bad_lines(),
                         ids=["bad JSON", "missing field", "bad namespace", "duplicate job id"])
def test_a_malformed_body_is_a_422_naming_the_line_and_nothing_is_written(
        api: TestClient, bad: str, field: str, kind: str) -> None:
    body = f"{dump_line(team_a()[0])}\n{bad}\n{dump_line(team_a()[1])}\n"
    answer = _post(api, body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["detail"].startswith("line 2: ")
    error = problem["errors"][0]
    assert (error["field"], error["line"], error["type"]) == (field, 2, kind)
    assert error["loc"][:2] == ["body", 2]
    assert _history_ids(api) == []
    assert "Team A" not in answer.text, "the 422 never echoes the input"


def test_an_import_never_duplicates_a_job_already_there(api: TestClient) -> None:
    local_id = new_id()
    with _sessions(api)() as session:
        import_outcomes(session, [team_a()[0]])
        session.add(Job(id=local_id, status="running", workload=None,
                        task=SMALL.model_dump(mode="json"), n_trials=5, pruner="median",
                        study_name=f"optpilot-job-{local_id}", created_at=utcnow()))
        session.commit()
    mine = job(local_id, SMALL, "adam", 1.0)  # this server's own job writes its outcome itself
    answer = _post(api, lines([team_a()[0], mine, team_a()[1]]))
    assert answer.json() == {"added": 1, "skipped": 2}
    assert _history_ids(api) == ["a-s1", "a-s2"]
    for empty in ("", "\n\n"):
        assert _post(api, empty).json() == {"added": 0, "skipped": 0}


def test_the_body_limit_holds_for_imports(migrated_url: str) -> None:
    body = lines(team_a())
    limit = len(body.encode()) - 1
    with TestClient(create_app(settings_for(migrated_url, max_body_bytes=limit))) as small:
        answer = _post(small, body)
        assert answer.status_code == 413, answer.text
        assert f"exceeds the limit of {limit} bytes" in answer.json()["detail"]
        assert _history_ids(small) == []


# -- the Python client ----------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the client is HTTP only
def test_the_client_exports_imports_in_batches_and_reads_insights(migrated_url: str) -> None:
    body = lines(team_a())
    limit = max(len(x.encode()) + 1 for x in body.splitlines()) * 2  # two lines a request
    app = create_app(settings_for(migrated_url, max_body_bytes=limit))
    with live_server(app) as base, OptpilotClient(base, api_key="", retries=0) as client:
        # batches larger than the server takes are halved on its 413
        assert client.import_history(body.splitlines(), batch_bytes=10**6) == {
            "added": 5, "skipped": 0}
        exported = client.export_history(namespace="team-a")
        assert [e["job_id"] for e in exported] == [o.job_id for o in team_a()]
        assert client.import_history(exported) == {"added": 0, "skipped": 5}
        assert client.export_history(namespace="team-b") == []
        insights = client.rule_insights(namespace="team-a")
        assert insights["rules"][0]["rule"] == "small_problem"
        bad = [dump_line(job("z1", SMALL, "adam", 1.0)), dump_line(job("z2", SMALL, "adam", 1.0)),
               dump_line(job("z3", SMALL, "adam", 1.0)), '{"oops": 1}']
        with pytest.raises(ValidationFailed) as caught:
            client.import_history(bad, batch_bytes=limit)
        assert caught.value.detail is not None and caught.value.detail.startswith("line 4: ")
        assert caught.value.errors[0]["line"] == 4 and caught.value.errors[0]["loc"][1] == 4


# -- the CLI ----------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export_import_and_insights_from_the_database_and_a_server(
        api: TestClient, migrated_url: str, fresh_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTPILOT_API_KEY", raising=False)
    _post(api, lines(team_a() + team_b()))
    direct, served = tmp_path / "direct.jsonl", tmp_path / "served.jsonl"
    code, _, err = run(capsys, "history", "export", "-o", str(direct), "--db", migrated_url)
    assert code == 0 and err == f"wrote 6 job(s) to {direct}\n"
    with live_server(create_app(settings_for(fresh_url))) as base:
        assert run(capsys, "history", "export", "-o", str(served), "--url", base)[0] == 0
        assert served.read_text() == "", "the fresh server has no history yet"
        code, out, _ = run(capsys, "history", "import", str(direct), "--url", base)
        assert code == 0 and out.startswith("imported 6 job(s)")
        assert run(capsys, "history", "export", "-o", str(served), "--url", base)[0] == 0
        assert served.read_bytes() == direct.read_bytes()
        code, out, _ = run(capsys, "insights", "--namespace", "team-a", "--json", "--url", base)
        remote = json.loads(out)
    code, out, _ = run(capsys, "history", "import", str(direct), "--db", fresh_url, "--json")
    assert code == 0 and json.loads(out) == {"added": 0, "skipped": 6}
    code, out, _ = run(capsys, "insights", "--namespace", "team-a", "--json", "--db", fresh_url)
    assert code == 0 and json.loads(out) == remote
    assert remote["rules"][0]["rule"] == "small_problem"
    code, out, _ = run(capsys, "insights", "--namespace", "team-a", "--db", migrated_url)
    assert code == 0 and "Where the rules were wrong" in out
    assert out.index("small_problem") < out.index("convolutional")
    code, out, _ = run(capsys, "history", "export", "-o", "-", "--namespace", "team-b",
                       "--db", migrated_url)
    assert code == 0 and out == lines(team_b())


@pytest.mark.parametrize(("bad", "message"), [
    ("not json", "line 2: invalid JSON"),
    (json.dumps({k: v for k, v in team_b()[0].to_json().items() if k != "task"}),
     "line 2: task: Field required"),
    (json.dumps({**team_b()[0].to_json(), "namespace": "No Such"}), "line 2: namespace: "),
    (dump_line(team_a()[0]), "line 2: job_id: the same job_id as line 1"),
])
def test_cli_a_malformed_file_is_one_line_exit_2_and_nothing_imported(
        api: TestClient, migrated_url: str, tmp_path: Path, bad: str, message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{dump_line(team_a()[0])}\n{bad}\n{dump_line(team_a()[1])}\n")
    code, out, err = run(capsys, "history", "import", str(path), "--db", migrated_url)
    assert code == 2 and out == ""
    assert err.startswith(f"optpilot history: error: {path}: {message}")
    assert err.endswith("; nothing imported\n") and err.count("\n") == 1
    assert _history_ids(api) == []


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.db"
    for argv in (("insights", "--db", str(missing)),
                 ("history", "export", "-o", str(tmp_path / "x"), "--db", str(missing)),
                 ("history", "import", str(tmp_path / "x"), "--db", str(missing))):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, err
    assert not missing.exists()
    assert "no database at" in run(capsys, "insights", "--db", str(missing))[2]
    code, _, err = run(capsys, "insights", "--namespace", "Bad NS", "--db", str(missing))
    assert code == 2 and err.startswith("optpilot insights: error: --namespace: ")
    empty = tmp_path / "empty.db"
    empty.touch()
    path = tmp_path / "one.jsonl"
    path.write_text(lines(team_b()))
    code, _, err = run(capsys, "history", "import", str(path), "--db", str(empty))
    assert code == 2 and "is at revision None" in err and "optpilot db upgrade" in err
