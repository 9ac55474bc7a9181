"""The job store's life cycle: schema versions, upgrades, refusals, backup and restore.

Every test runs on SQLite and on PostgreSQL (a throw-away database per test) unless it is
about one of them. A "store from before migrations" is made here the way cordt1 made it then:
``metadata.create_all`` of the tables below (a frozen copy of that release's schema).
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    inspect,
    text,
)
from sqlalchemy.engine import Engine

from service.cli import cli
from service.jobs import store as store_module
from service.jobs.schema import (
    SchemaError,
    SchemaState,
    head_revision,
    schema_status,
    upgrade,
)
from service.jobs.store import JobState, JobStore
from service.pipeline.history import choose_prior

ROOT = Path(__file__).resolve().parents[1]
UPGRADE_LINE = (
    "job store schema 1 (made before schema versions were recorded) is older than this "
    "cordt1 (2): run `cordt1 db upgrade` (back up first: docs/operations.md)"
)


def _before_migrations() -> MetaData:
    """The schema cordt1 made with ``metadata.create_all`` before migrations (a frozen copy)."""
    md = MetaData()
    Table(
        "instances",
        md,
        Column("sop_instance_uid", String(64), primary_key=True),
        Column("study_uid", String(64), index=True, nullable=False),
        Column("series_uid", String(64), index=True, nullable=False),
        Column("component", String(16), nullable=False),
        Column("path", Text, nullable=False),
        Column("calling_ae", String(16), nullable=False),
        Column("received_at", Float, nullable=False),
        Column("own_result", Boolean, nullable=False, default=False),
        Column("info", Text, nullable=False),
    )
    Table(
        "jobs",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("study_uid", String(64), index=True, nullable=False),
        Column("patient_key", String(64), index=True, nullable=False, default=""),
        Column("state", String(16), index=True, nullable=False),
        Column("complete", Boolean, nullable=False, default=True),
        Column("reason", Text, nullable=False, default=""),
        Column("series", Text, nullable=False),
        Column("n_instances", Integer, nullable=False, default=0),
        Column("attempts", Integer, nullable=False, default=0),
        Column("error", Text, nullable=False, default=""),
        Column("result", Text, nullable=False, default="{}"),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        Column("started_at", Float),
        Column("finished_at", Float),
        Column("lease_owner", String(128), nullable=False, default=""),
        Column("lease_expires_at", Float),
    )
    Table(
        "deliveries",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
        Column("run", Integer, nullable=False),
        Column("sop_instance_uid", String(64), nullable=False),
        Column("destination", String(300), nullable=False),
        Column("status", String(16), nullable=False),
        Column("time", Float, nullable=False),
        Column("detail", Text, nullable=False, default=""),
        UniqueConstraint("job_id", "run", "sop_instance_uid", "destination", name="uq_delivery"),
    )
    Table(
        "events",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("time", Float, nullable=False, index=True),
        Column("job_id", Integer, ForeignKey("jobs.id"), nullable=True, index=True),
        Column("kind", String(32), nullable=False),
        Column("message", Text, nullable=False),
    )
    return md


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    eng = create_engine(url)
    yield eng
    eng.dispose()


def _differences(engine: Engine, metadata: MetaData) -> list[Any]:
    """What Alembic sees differ between the database and ``metadata`` (tables, columns, types,
    nullability, indexes, unique constraints, foreign keys)."""
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def _summary(study_date: str, study_time: str, tag: str) -> dict[str, Any]:
    return {"exam": {"study_date": study_date, "study_time": study_time}, "tag": tag}


def _legacy_job(job_id: int, patient: str, state: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job_id,
        "study_uid": f"1.2.{job_id}",
        "patient_key": patient,
        "state": state,
        "complete": True,
        "reason": "",
        "series": json.dumps([f"1.2.{job_id}.1"]),
        "n_instances": 3,
        "attempts": 1,
        "error": "",
        "result": json.dumps(result),
        "created_at": float(job_id),
        "updated_at": float(job_id),
        "started_at": None,
        "finished_at": None,
        "lease_owner": "",
        "lease_expires_at": None,
    }


def _make_store_before_migrations(engine: Engine, job_rows: list[dict[str, Any]]) -> None:
    legacy = _before_migrations()
    legacy.create_all(engine)
    with engine.begin() as conn:
        if job_rows:
            conn.execute(insert(legacy.tables["jobs"]), job_rows)
        conn.execute(
            insert(legacy.tables["instances"]).values(
                sop_instance_uid="1.2.1.1.1",
                study_uid="1.2.1",
                series_uid="1.2.1.1",
                component="uni",
                path="/spool/a.dcm",
                calling_ae="SCANNER",
                received_at=1.0,
                own_result=False,
                info=json.dumps({"patient_key": "p1", "study_uid": "1.2.1"}),
            )
        )
        conn.execute(
            insert(legacy.tables["events"]).values(
                time=1.0, job_id=1, kind="job.created", message="job 1 queued (complete)"
            )
        )
        conn.execute(
            insert(legacy.tables["deliveries"]).values(
                job_id=1,
                run=1,
                sop_instance_uid="9.9.1",
                destination="PACS@host:104",
                status="sent",
                time=2.0,
                detail="",
            )
        )


# --- schema versions --------------------------------------------------------------------------
def test_a_new_store_is_created_at_the_newest_schema(url: str, engine: Engine) -> None:
    assert schema_status(engine).state is SchemaState.EMPTY
    store = JobStore(url)
    store.close()
    status = schema_status(engine)
    assert (status.state, status.current, status.head) == (SchemaState.CURRENT, "0002", "0002")
    assert head_revision() == "0002"
    # what the migrations built is exactly what the code queries (nothing missing or extra)
    assert _differences(engine, store_module.metadata) == []


def test_revision_1_is_the_schema_create_all_made_before_migrations(engine: Engine) -> None:
    from alembic import command

    from service.jobs.schema import _config

    with engine.begin() as conn:
        command.upgrade(_config(conn), "0001")
    assert _differences(engine, _before_migrations()) == []
    assert schema_status(engine).state is SchemaState.OLDER


def test_a_store_from_before_migrations_is_refused_then_upgraded_with_its_rows(
    url: str, engine: Engine
) -> None:
    done = _legacy_job(1, "p1", "done", {"summary": _summary("20250101", "0900", "first")})
    queued = _legacy_job(2, "p1", "queued", {})
    _make_store_before_migrations(engine, [done, queued])

    with pytest.raises(SchemaError) as refused:
        JobStore(url)
    assert str(refused.value) == UPGRADE_LINE
    status = schema_status(engine)
    assert (status.state, status.current, status.unversioned) == (SchemaState.OLDER, "0001", True)

    assert upgrade(engine) == ("0001", "0002")
    assert _differences(engine, store_module.metadata) == []
    store = JobStore(url)
    try:
        assert [j.id for j in store.list_jobs()] == [2, 1]
        assert store.get_job(2).state is JobState.QUEUED
        assert store.get_job(1).result["summary"]["tag"] == "first"
        assert [e["message"] for e in store.events(job_id=1)] == ["job 1 queued (complete)"]
        assert [d.destination for d in store.delivery_records(1)] == ["PACS@host:104"]
        assert store.recorded_paths() == {"/spool/a.dcm"}
        assert store.patient_study_uids("p1") == {"1.2.1"}  # filled in from the instance's info
        # the upgrade filled the new columns from the stored results: job 1 is a prior now
        prior = store.prior_summary(
            patient_key="p1", study_uid="1.2.9", job_id=9, moment=("20250601", "")
        )
        assert prior is not None and prior["tag"] == "first"
        assert store.claim(2, "w") == 2  # and the store works as usual (its 2nd run)
    finally:
        store.close()
    assert upgrade(engine) == ("0002", "0002")  # a second upgrade changes nothing


def test_a_failed_upgrade_changes_nothing(url: str, engine: Engine) -> None:
    done = _legacy_job(1, "p1", "done", {"summary": _summary("20250101", "0900", "first")})
    _make_store_before_migrations(engine, [done])
    with engine.begin() as conn:  # the index schema 2 adds cannot be made: its name is taken
        conn.execute(text("CREATE INDEX ix_jobs_prior ON events (kind)"))
    with pytest.raises(Exception, match="ix_jobs_prior"):
        upgrade(engine)
    # all or nothing, on SQLite too: no new column, no version recorded, the rows as they were
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert "study_date" not in columns
    status = schema_status(engine)
    assert (status.state, status.unversioned) == (SchemaState.OLDER, True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 1


def test_a_store_from_before_leases_is_completed_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # the first releases: no lease columns, no deliveries
        conn.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, study_uid VARCHAR(64) NOT NULL, "
            "patient_key VARCHAR(64) NOT NULL, state VARCHAR(16) NOT NULL, complete BOOLEAN "
            "NOT NULL, reason TEXT NOT NULL, series TEXT NOT NULL, n_instances INTEGER NOT "
            "NULL, attempts INTEGER NOT NULL, error TEXT NOT NULL, result TEXT NOT NULL, "
            "created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, started_at FLOAT, "
            "finished_at FLOAT)"
        )
        conn.execute(
            "INSERT INTO jobs VALUES (1, '1.2', '', 'running', 1, '', '[]', 1, 1, '', '{}', "
            "0, 0, 0, NULL)"
        )
    conn.close()
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        with pytest.raises(SchemaError, match=r"schema 1 .* is older"):
            JobStore(url)
        assert upgrade(engine) == ("0001", "0002")
    finally:
        engine.dispose()
    store = JobStore(url)
    try:
        job = store.get_job(1)
        assert job.lease_owner == "" and job.lease_stale()  # an old running job: nobody on it
        assert store.claim(1, "w", lease_s=60) == 2
        assert store.delivery_records(1) == []
    finally:
        store.close()


def test_a_newer_schema_is_refused_with_one_line(url: str, engine: Engine) -> None:
    JobStore(url).close()
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    line = (
        "job store schema 3 is newer than this cordt1 (2): run the cordt1 release that "
        "upgraded it (see docs/operations.md)"
    )
    with pytest.raises(SchemaError) as refused:
        JobStore(url)
    assert str(refused.value) == line
    with pytest.raises(SchemaError, match="newer than this cordt1"):
        upgrade(engine)  # never "upgraded" backwards either
    assert schema_status(engine).current == "0003"


def test_a_database_with_only_some_tables_of_ours_is_not_taken_for_a_store(
    engine: Engine, url: str
) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)"))
    with pytest.raises(SchemaError, match="not a cordt1 job store"):
        JobStore(url)
    with pytest.raises(SchemaError, match="not a cordt1 job store"):
        upgrade(engine)


def test_two_processes_opening_an_empty_store_at_once_both_succeed(url: str) -> None:
    # serve and its workers start together on a new store: one creates it, the other waits
    # (PostgreSQL advisory lock) or finds it made (SQLite)
    script = "import sys; from service.jobs.store import JobStore; JobStore(sys.argv[1]).close()"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [_python(), "-c", script, url], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    engine = create_engine(url)
    try:
        assert schema_status(engine).state is SchemaState.CURRENT
    finally:
        engine.dispose()


def _python() -> str:
    import sys

    return sys.executable


# --- the commands -----------------------------------------------------------------------------
def test_db_status_and_db_upgrade_commands(url: str, engine: Engine, tmp_path: Path) -> None:
    _make_store_before_migrations(engine, [_legacy_job(1, "p", "done", {})])
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path / "data"), "--database-url", url]

    status = runner.invoke(cli, ["db", "status", *args])
    assert status.exit_code == 1, status.output
    assert "schema:    1 (made before schema versions were recorded)" in status.output
    assert "head:      2 (this cordt1)" in status.output
    assert "cordt1 db upgrade" in status.output

    serve = runner.invoke(cli, ["serve", *args, "--workers", "0", "--port", "0"])
    assert serve.exit_code == 1
    last = serve.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot start: ") and last.endswith(UPGRADE_LINE), last
    assert serve.stdout == ""

    worker = runner.invoke(cli, ["worker", *args])
    assert worker.exit_code == 1
    last = worker.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot start: ") and last.endswith(UPGRADE_LINE), last

    upgraded = runner.invoke(cli, ["db", "upgrade", *args])
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout.strip() == "job store upgraded from schema 1 to 2"

    status = runner.invoke(cli, ["db", "status", *args])
    assert status.exit_code == 0, status.output
    assert "schema:    2\n" in status.output
    assert "state:     current" in status.output
    assert runner.invoke(cli, ["db", "upgrade", *args]).stdout.strip() == (
        "job store already at schema 2"
    )


def test_db_status_hides_the_database_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://cordt1:s3cret@127.0.0.1:1/nowhere"
    result = CliRunner().invoke(
        cli, ["db", "status", "--data-dir", str(tmp_path), "--database-url", url]
    )
    assert result.exit_code == 1  # nothing listens on port 1: one line, no traceback
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: job store postgresql+psycopg2://cordt1:***@127.0.0.1:1/")
    assert "cannot be opened" in line and "s3cret" not in result.output


def test_the_migrations_are_packaged() -> None:
    from setuptools import find_packages

    packages = find_packages(str(ROOT), include=["service*"])
    assert {"service.jobs.migrations", "service.jobs.migrations.versions"} <= set(packages)
    assert (ROOT / "service/jobs/migrations/env.py").is_file()


# --- the prior, by query ----------------------------------------------------------------------
def _old_prior(
    jobs: list[dict[str, Any]], patient: str, study_uid: str, job_id: int, moment: tuple[str, str]
) -> Any:
    """The selection before schema 2: every done job loaded, then choose_prior."""
    others = [
        json.loads(j["result"])["summary"]
        for j in sorted(jobs, key=lambda j: j["id"])
        if j["state"] == "done"
        and j["patient_key"] == patient
        and j["study_uid"] != study_uid
        and j["id"] != job_id
        and "summary" in json.loads(j["result"])
    ]
    return choose_prior(others, moment)


def _random_jobs(rng: random.Random, n: int) -> list[dict[str, Any]]:
    days = ["", "20240105", "20240105", "20240310", "20241111", "20250101", "20250630"]
    times = ["", "0800", "0930", "093000.5", "1200"]
    rows = []
    for job_id in range(1, n + 1):
        state = rng.choice(["done", "done", "done", "failed", "queued", "sending"])
        if rng.random() < 0.1:
            result: dict[str, Any] = {"dicom": []}  # no summary: never a prior
        else:
            result = {"summary": _summary(rng.choice(days), rng.choice(times), f"job{job_id}")}
        row = _legacy_job(job_id, f"p{rng.randrange(60)}", state, result)
        if rng.random() < 0.05:  # a second job of the same study (reprocessed)
            row["study_uid"] = f"1.2.{max(1, job_id - 1)}"
        rows.append(row)
    return rows


def test_prior_lookup_by_query_matches_the_old_rule_with_one_query(
    url: str, engine: Engine
) -> None:
    rng = random.Random(13)
    rows = _random_jobs(rng, 2000)
    _make_store_before_migrations(engine, rows)  # a long history, then the upgrade
    upgrade(engine)
    store = JobStore(url)
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        moments = [("", ""), ("20240105", ""), ("20240105", "0930"), ("20250101", "1200")]
        moments += [("20241111", "0800"), ("20990101", ""), ("20200101", "")]
        checked = found = 0
        for patient in [f"p{i}" for i in range(60)] + ["nobody"]:
            for moment in moments:
                current = rng.choice(rows)
                expected = _old_prior(rows, patient, current["study_uid"], current["id"], moment)
                statements.clear()
                got = store.prior_summary(
                    patient_key=patient,
                    study_uid=current["study_uid"],
                    job_id=current["id"],
                    moment=moment,
                )
                assert len(statements) == 1, statements
                assert got == (dict(expected) if expected is not None else None), (
                    patient,
                    moment,
                )
                checked += 1
                found += got is not None
        assert checked == 61 * len(moments) and found > checked // 2
        assert store.prior_summary(patient_key="", study_uid="x", job_id=0, moment=("", "")) is (
            None
        )
    finally:
        store.close()


def test_the_job_runner_finds_the_prior_with_one_query(tmp_path: Path) -> None:
    from service.jobs.tasks import JobRunner
    from service.settings import load_settings

    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    engine = create_engine(url)
    rows = [
        _legacy_job(i, "p", "done", {"summary": _summary(f"2024{i % 12 + 1:02d}01", "", f"j{i}")})
        for i in range(1, 301)
    ]
    _make_store_before_migrations(engine, rows)
    upgrade(engine)
    engine.dispose()
    store = JobStore(url)
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        runner = JobRunner(load_settings(data_dir=tmp_path / "data"), store)
        prior = runner._prior_summary(999, "p", "1.2.999", ("20240415", ""))
        assert prior is not None and prior["exam"]["study_date"] == "20240401"
        assert prior["tag"] == "j291"  # the latest processed of the April exams
        assert len(statements) == 1
    finally:
        store.close()


def test_the_prior_query_uses_the_prior_index(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    statements: list[tuple[str, Any]] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append((a[2], a[3])))
    store.prior_summary(patient_key="p", study_uid="s", job_id=1, moment=("20250101", "1200"))
    sql, params = statements[-1]
    with store.engine.connect() as conn:
        plan = " ".join(
            str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
        )
    store.close()
    assert "ix_jobs_prior" in plan and "SCAN jobs" not in plan.replace("SCAN jobs USING", "")


def test_finished_jobs_written_through_the_store_are_found_as_priors(url: str) -> None:
    store = JobStore(url)
    try:

        def finished(study: str, state: JobState, summary: dict[str, Any] | None) -> int:
            job_id = store.create_job(
                study_uid=study,
                patient_key="p",
                series_uids=[f"{study}.1"],
                n_instances=1,
                complete=True,
            )
            run = store.claim(job_id, "w")
            assert run == 1
            result = {"summary": summary} if summary is not None else {"dicom": []}
            assert store.finish(job_id, "w", state, result=result)
            return job_id

        finished("1.1", JobState.DONE, _summary("20240101", "0800", "jan"))
        finished("1.2", JobState.FAILED, _summary("20240201", "0800", "feb failed"))
        finished("1.3", JobState.DONE, None)
        sent = finished("1.4", JobState.SENDING, _summary("20240301", "0800", "mar"))

        def prior(moment: tuple[str, str]) -> Any:
            found = store.prior_summary(patient_key="p", study_uid="9", job_id=99, moment=moment)
            return None if found is None else found["tag"]

        assert prior(("20240401", "")) == "jan"  # march is still being sent
        # a prior fetched from the PACS lets its follow-up go once its job ended
        assert [store.study_finished(uid) for uid in ("1.1", "1.2", "1.4", "7.7")] == [
            True,
            True,
            False,
            False,
        ]
        assert store.claim_send(sent, "s")
        assert store.finish(
            sent, "s", JobState.DONE, result={"summary": _summary("20240301", "0800", "mar")}
        )
        assert prior(("20240401", "")) == "mar"
        assert prior(("20240301", "0800")) == "jan"  # the same moment is not "before"
        assert prior(("20231231", "")) is None  # nothing earlier
        # re-sent with a new result: the columns follow the result
        store.resume_sending(sent, {"summary": _summary("20240215", "", "mar2")}, note="x")
        store.set_state(sent, JobState.DONE)
        assert prior(("20240220", "")) == "mar2"
        assert prior(("20240401", "")) == "mar2"
    finally:
        store.close()


def test_a_patients_studies_are_found_by_one_query(url: str) -> None:
    store = JobStore(url)
    statements: list[str] = []
    try:
        for n, (study, patient, own) in enumerate(
            [
                ("1.1", "p", False),
                ("1.1", "p", False),
                ("1.2", "p", False),
                ("1.3", "q", False),
                ("1.4", "p", True),
            ]
        ):
            store.record_instance(
                sop_instance_uid=f"9.{n}",
                study_uid=study,
                series_uid=f"{study}.1",
                component="uni",
                path=f"/spool/{n}.dcm",
                calling_ae="SCANNER",
                received_at=float(n),
                own_result=own,
                info={"patient_key": patient, "study_uid": study},
            )
        batcher_row = {  # a row as the receiver's batcher commits it (info as JSON text)
            "sop_instance_uid": "9.9",
            "study_uid": "1.5",
            "series_uid": "1.5.1",
            "component": "uni",
            "path": "/spool/9.dcm",
            "calling_ae": "SCANNER",
            "received_at": 9.0,
            "own_result": False,
            "info": json.dumps({"patient_key": "p"}),
        }
        store.record_instances([batcher_row])
        event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        assert store.patient_study_uids("p") == {"1.1", "1.2", "1.5"}  # our results left out
        assert store.patient_study_uids("q") == {"1.3"}
        assert store.patient_study_uids("nobody") == set()
        assert len(statements) == 3
    finally:
        store.close()


# --- backup and restore as docs/operations.md says ---------------------------------------------
def _documented_commands(section: str) -> list[str]:
    """The shell lines of the fenced block under ``section`` in docs/operations.md."""
    text_ = (ROOT / "docs" / "operations.md").read_text()
    start = text_.index(section)
    block = text_[text_.index("```sh", start) + len("```sh") : text_.index("```\n", start + 1)]
    return [line for line in block.strip().splitlines() if line and not line.startswith("#")]


def test_sqlite_backup_while_running_and_restore_as_documented(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    live = data / "jobs.sqlite"
    store = JobStore(f"sqlite:///{live}")  # the service has the store open (WAL mode)
    ids = [
        store.create_job(
            study_uid=f"1.{i}",
            patient_key="p",
            series_uids=[f"1.{i}.1"],
            n_instances=1,
            complete=True,
        )
        for i in range(5)
    ]
    store.set_state(ids[0], JobState.DONE, result={"summary": _summary("20240101", "", "a")})
    backups = tmp_path / "backups"
    backups.mkdir()
    env = {"DATA_DIR": str(data), "BACKUP": str(backups / "jobs-backup.sqlite")}
    for line in _documented_commands("### Back up SQLite"):
        subprocess.run(["bash", "-c", line], check=True, env={**env, "PATH": "/usr/bin:/bin"})
    store.create_job(  # after the backup: gone after the restore
        study_uid="1.late", patient_key="p", series_uids=["x"], n_instances=1, complete=True
    )
    store.close()  # the service is stopped for a restore

    for line in _documented_commands("### Restore SQLite"):
        subprocess.run(["bash", "-c", line], check=True, env={**env, "PATH": "/usr/bin:/bin"})
    restored = JobStore(f"sqlite:///{live}")
    try:
        assert sorted(j.id for j in restored.list_jobs()) == ids
        assert restored.get_job(ids[0]).result["summary"]["tag"] == "a"
        assert schema_status(restored.engine).state is SchemaState.CURRENT
    finally:
        restored.close()


def test_postgresql_backup_and_restore_as_documented(postgres_url: str, tmp_path: Path) -> None:
    store = JobStore(postgres_url)
    job_id = store.create_job(
        study_uid="1.1", patient_key="p", series_uids=["1.1.1"], n_instances=1, complete=True
    )
    store.close()
    from sqlalchemy.engine import make_url

    parsed = make_url(postgres_url)
    env = {
        "PATH": "/usr/bin:/bin",
        "PGHOST": str(parsed.host),
        "PGPORT": str(parsed.port or 5432),
        "PGUSER": str(parsed.username),
        "PGDATABASE": str(parsed.database),
        "BACKUP": str(tmp_path / "cordt1.dump"),
    }
    for line in _documented_commands("### Back up PostgreSQL"):
        subprocess.run(["bash", "-c", line], check=True, env=env)
    for line in _documented_commands("### Restore PostgreSQL"):  # drops the database first
        subprocess.run(["bash", "-c", line], check=True, env=env)
    restored = JobStore(postgres_url)
    try:
        assert [j.id for j in restored.list_jobs()] == [job_id]
    finally:
        restored.close()
