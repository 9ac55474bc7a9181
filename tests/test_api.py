"""The HTTP API: contract (OpenAPI), roles, actions, metrics and readiness."""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_api
from service.jobs.heartbeat import Heartbeat
from service.jobs.store import JobState
from service.phantom.pacs import free_port
from tests.api_fixtures import PASSWORDS, Seeded, broker_messages, login, seed


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the arguments only: no $CORDT1_CONFIG left by another test's load."""
    monkeypatch.delenv("CORDT1_CONFIG", raising=False)


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[Seeded]:
    s = seed(tmp_path / "data")
    yield s
    s.store.close()


@pytest.fixture
def client(seeded: Seeded) -> TestClient:
    return TestClient(create_api(seeded.settings, seeded.store, seeded.celery, seeded.controls))


def _path_values(seeded: Seeded) -> dict[str, str]:
    return {
        "job_id": str(seeded.failed_id),
        "name": "t1_overlay.png",
        "part": "processing",
        "action": "pause",
    }


def _routes(spec: dict) -> list[tuple[str, str, str]]:
    out = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            out.append((method, path, operation))
    return out


def test_every_route_of_the_openapi_spec_answers_with_a_documented_status(
    client: TestClient, seeded: Seeded
) -> None:
    spec = client.get("/openapi.json").json()
    routes = _routes(spec)
    assert len(routes) >= 15
    login(client, "otto")
    values = _path_values(seeded)
    for method, path, operation in routes:
        url = path.format(**{k: v for k, v in values.items() if "{" + k + "}" in path})
        body = {"name": "otto", "password": PASSWORDS["otto"]} if path == "/api/login" else None
        response = client.request(method.upper(), url, json=body)
        documented = set(operation["responses"])
        assert str(response.status_code) in documented, (method, url, response.status_code)
        if path == "/api/logout":
            login(client, "otto")  # logged out by the call: log in again for the next routes
    # The path of a job that does not exist gives its documented 404.
    response = client.get("/api/jobs/999999")
    assert response.status_code == 404
    assert "404" in spec["paths"]["/api/jobs/{job_id}"]["get"]["responses"]


def test_anonymous_callers_get_401_on_every_api_route_but_health_and_metrics(
    client: TestClient, seeded: Seeded
) -> None:
    spec = client.get("/openapi.json").json()
    values = _path_values(seeded)
    for method, path, operation in _routes(spec):
        url = path.format(**{k: v for k, v in values.items() if "{" + k + "}" in path})
        response = client.request(method.upper(), url)
        if path in ("/healthz", "/readyz", "/metrics", "/api/logout"):
            assert response.status_code in (200, 204, 503), path
        elif path == "/api/login":
            assert response.status_code == 422  # no credentials given
        else:
            assert response.status_code == 401, (method, path)
            assert "401" in operation["responses"]
    assert seeded.store.get_job(seeded.failed_id).state is JobState.FAILED
    assert not seeded.controls.is_paused("processing")
    assert client.get("/", follow_redirects=False).headers["location"] == "/web/index.html"
    page = client.get("/web/index.html")
    assert page.status_code == 200 and "app.js" in page.text  # the page itself is public
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_a_viewer_reads_but_cannot_act(client: TestClient, seeded: Seeded) -> None:
    login(client, "vera")
    assert client.get("/api/me").json() == {"name": "vera", "role": "viewer"}
    assert client.get("/api/jobs").status_code == 200
    assert client.post(f"/api/jobs/{seeded.failed_id}/retry").status_code == 403
    assert client.post("/api/control/intake/pause").status_code == 403
    assert seeded.store.get_job(seeded.failed_id).state is JobState.FAILED
    assert not seeded.controls.is_paused("intake")
    assert broker_messages(seeded.settings.data_dir) == []


def test_an_operator_retries_a_failed_job_queued_in_the_broker_and_audited(
    client: TestClient, seeded: Seeded
) -> None:
    login(client, "otto")
    response = client.post(f"/api/jobs/{seeded.failed_id}/retry")
    assert response.status_code == 200
    assert response.json()["state"] == "queued"
    assert seeded.store.get_job(seeded.failed_id).state is JobState.QUEUED
    messages = broker_messages(seeded.settings.data_dir)
    assert [(m["task"], m["argsrepr"]) for m in messages] == [
        ("cordt1.process_job", f"[{seeded.failed_id}]")
    ]
    audit = seeded.store.events(job_id=seeded.failed_id, limit=5)
    assert any(e["kind"] == "operator.retry" and "by otto" in e["message"] for e in audit), audit
    # As `cordt1 retry`: a done job is refused (re-send is its own action), unknown is 404.
    assert client.post(f"/api/jobs/{seeded.done_id}/retry").status_code == 409
    assert client.post("/api/jobs/424242/retry").status_code == 404
    assert len(broker_messages(seeded.settings.data_dir)) == 1


def test_an_operator_cancels_with_a_reason_and_resend_needs_results(
    client: TestClient, seeded: Seeded
) -> None:
    login(client, "vera")
    assert client.post(f"/api/jobs/{seeded.queued_id}/cancel").status_code == 403
    login(client, "otto")
    response = client.post(
        f"/api/jobs/{seeded.queued_id}/cancel", json={"reason": "wrong patient sent"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    audit = seeded.store.events(job_id=seeded.queued_id, limit=10)
    assert any("otto" in e["message"] and "wrong patient sent" in e["message"] for e in audit)
    # a finished job cannot be cancelled; a job without results has nothing to re-send
    assert client.post(f"/api/jobs/{seeded.queued_id}/cancel").status_code == 409
    assert client.post(f"/api/jobs/{seeded.queued_id}/resend").status_code == 409
    assert client.post(f"/api/jobs/{seeded.failed_id}/cancel").status_code == 409
    assert client.post("/api/jobs/424242/cancel").status_code == 404
    assert broker_messages(seeded.settings.data_dir) == []


def test_pause_and_resume_are_kept_and_audited_with_the_user(
    client: TestClient, seeded: Seeded
) -> None:
    login(client, "otto")
    body = client.post("/api/control/intake/pause").json()
    assert body["intake"]["paused"] and body["intake"]["by"] == "otto"
    assert not body["processing"]["paused"]
    assert seeded.controls.is_paused("intake")
    assert client.get("/api/queue").json()["control"]["intake"]["paused"]
    assert client.post("/api/control/intake/resume").json()["intake"]["paused"] is False
    assert client.post("/api/control/everything/pause").status_code == 422
    kinds = [(e["kind"], e["message"]) for e in seeded.store.events(limit=3)]
    assert ("operator.resume", "intake resumed by otto") in kinds
    assert ("operator.pause", "intake paused by otto") in kinds


def test_job_list_filters_and_pages(client: TestClient, seeded: Seeded) -> None:
    login(client, "vera")
    everything = client.get("/api/jobs").json()
    assert everything["total"] == 3
    assert [j["id"] for j in everything["jobs"]] == [
        seeded.queued_id,
        seeded.failed_id,
        seeded.done_id,
    ]
    failed = client.get("/api/jobs", params={"state": "failed"}).json()
    assert [j["id"] for j in failed["jobs"]] == [seeded.failed_id]
    assert "no received file" in failed["jobs"][0]["error"]
    both = client.get("/api/jobs", params=[("state", "failed"), ("state", "done")]).json()
    assert both["total"] == 2
    page = client.get("/api/jobs", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and [j["id"] for j in page["jobs"]] == [seeded.failed_id]
    by_key = client.get("/api/jobs", params={"patient_key": "key100"}).json()
    assert [j["id"] for j in by_key["jobs"]] == [seeded.done_id]
    assert client.get("/api/jobs", params={"state": "lost"}).status_code == 422
    assert client.get("/api/jobs", params={"limit": 0}).status_code == 422


def test_job_detail_has_timings_outputs_and_the_report_files(
    client: TestClient, seeded: Seeded
) -> None:
    login(client, "vera")
    job = client.get(f"/api/jobs/{seeded.done_id}").json()
    assert job["timings_s"] == {"load": 1.25, "compute": 7.5, "write_results": 3.0}
    assert job["qc_verdict"] == "warn"
    assert job["qc_reasons"] == [
        "warn: slab 1: scanner T1 map not used: T1 map series 7: no value is positive "
        "(all values <= 0)"
    ]
    assert job["dicom_outputs"] == ["t1_map.dcm"]
    assert job["sent"] == {"PACS@127.0.0.1:11112": True}
    assert job["patient_key"] == "key100"
    assert [f["name"] for f in job["files"]] == ["report.pdf", "t1_overlay.png"]
    kinds = [e["kind"] for e in job["events"]]
    assert kinds[0] == "job.done" and "job.created" in kinds
    png = client.get(job["files"][1]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    pdf = client.get(job["files"][0]["url"])
    assert pdf.headers["content-type"] == "application/pdf"
    # Only the rendered report: no other file of the folder, no way out of it.
    base = f"/api/jobs/{seeded.done_id}/files"
    assert client.get(f"{base}/notes.txt").status_code == 404
    assert client.get(f"{base}/..%2F..%2Fjobs.sqlite").status_code == 404
    assert client.get(f"/api/jobs/{seeded.failed_id}").json()["files"] == []


def test_exams_and_destinations(client: TestClient, seeded: Seeded) -> None:
    login(client, "vera")
    exams = client.get("/api/exams").json()
    assert [e["study_uid"] for e in exams["exams"]] == ["1.2.3.200", "1.2.3.100"]
    assert exams["exams"][0]["n_instances"] == 3 and exams["exams"][0]["calling_ae"] == "SCANNER"
    assert "SCANNER@127.0.0.1 accepted" in exams["associations"][0]["message"]
    [pacs] = client.get("/api/destinations").json()
    assert pacs["destination"] == "PACS@127.0.0.1:11112"
    assert pacs["state"] == "ok" and "5 object(s) sent" in pacs["last_sent"]
    seeded.store.set_state(
        seeded.done_id,
        JobState.FAILED,
        error="results not delivered after 5 attempt(s): PACS@127.0.0.1:11112: refused",
    )
    [pacs] = client.get("/api/destinations").json()
    assert pacs["state"] == "failing" and "refused" in pacs["last_failure"]


def test_login_cookie_is_httponly_samesite_strict_and_logout_ends_it(
    client: TestClient, seeded: Seeded
) -> None:
    response = client.post("/api/login", json={"name": "otto", "password": PASSWORDS["otto"]})
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/me").status_code == 200
    assert client.post("/api/logout").status_code == 204
    assert client.get("/api/me").status_code == 401
    bad = client.post("/api/login", json={"name": "otto", "password": "wrong-password"})
    assert bad.status_code == 401
    assert client.post("/api/login", json={"name": "nobody", "password": "x"}).status_code == 401
    failures = [e["message"] for e in seeded.store.events(limit=5)]
    assert "failed login as 'otto'" in failures
    assert not any("wrong-password" in m for m in failures)


def test_http_basic_credentials_work_for_scripts(client: TestClient, seeded: Seeded) -> None:
    token = base64.b64encode(f"vera:{PASSWORDS['vera']}".encode()).decode()
    ok = client.get("/api/jobs", headers={"Authorization": f"Basic {token}"})
    assert ok.status_code == 200
    wrong = base64.b64encode(b"vera:nope").decode()
    assert client.get("/api/jobs", headers={"Authorization": f"Basic {wrong}"}).status_code == 401


def test_metrics_parse_and_count_what_the_store_holds(client: TestClient, seeded: Seeded) -> None:
    text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("cordt1_instances_received_total", ())] == 6
    assert samples[("cordt1_exams_completed_total", ())] == 1
    assert samples[("cordt1_jobs", (("state", "failed"),))] == 1
    assert samples[("cordt1_queue_depth", ())] == 1
    assert samples[("cordt1_results_sent_total", ())] == 1
    assert samples[("cordt1_stage_duration_seconds_count", (("stage", "compute"),))] == 1
    assert samples[("cordt1_stage_duration_seconds_sum", (("stage", "compute"),))] == 7.5
    assert (
        samples[("cordt1_stage_duration_seconds_bucket", (("le", "5.0"), ("stage", "compute")))]
        == 0
    )
    assert (
        samples[("cordt1_stage_duration_seconds_bucket", (("le", "10.0"), ("stage", "compute")))]
        == 1
    )
    free = samples[("cordt1_disk_free_bytes", (("path", str(seeded.settings.data_dir)),))]
    assert free == pytest.approx(shutil.disk_usage(seeded.settings.data_dir).free, rel=0.05)
    assert samples[("cordt1_workers_alive", ())] == 0
    assert samples[("cordt1_paused", (("part", "intake"),))] == 0
    seeded.store.set_state(seeded.queued_id, JobState.SENDING, error="attempt 1 of 5 failed: x")
    seeded.store.set_state(
        seeded.queued_id, JobState.FAILED, error="results not delivered after 5 attempt(s): x"
    )
    text = client.get("/metrics").text
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["cordt1_export_retries_total"] == 1
    assert values["cordt1_export_failures_total"] == 1


def test_readyz_needs_a_live_worker(client: TestClient, seeded: Seeded) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["workers"]["ok"] is False
    assert all(checks[name]["ok"] for name in ("job_store", "broker", "spool_disk"))
    beat = Heartbeat(seeded.settings.data_dir, "cordt1-test@host")
    beat.beat()
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert "cordt1-test@host" in response.json()["checks"]["workers"]["detail"]
    old = time.time() - 10 * seeded.settings.api.worker_heartbeat_s
    os.utime(beat.path, (old, old))  # a worker that stopped beating (killed) is not alive
    assert client.get("/readyz").status_code == 503
    beat.beat()
    beat.stop()  # a worker stopped cleanly removes its heartbeat
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_fails_when_the_job_store_is_gone(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    s = seed(tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'db' / 'jobs.sqlite'}")
    client = TestClient(create_api(s.settings, s.store, s.celery, s.controls))
    Heartbeat(s.settings.data_dir, "w").beat()
    login(client, "vera")
    assert client.get("/readyz").status_code == 200
    s.store.engine.dispose()
    shutil.rmtree(tmp_path / "db")  # the job store's storage is lost
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["job_store"]["ok"] is False
    assert "unreachable" in response.json()["checks"]["job_store"]["detail"]
    assert client.get("/api/jobs").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_readyz_fails_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    s = seed(tmp_path / "data", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    client = TestClient(create_api(s.settings, s.store, s.celery, s.controls))
    Heartbeat(s.settings.data_dir, "w").beat()
    started = time.monotonic()
    response = client.get("/readyz")
    assert time.monotonic() - started < 10
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"]["ok"] is False and "broker unreachable" in checks["broker"]["detail"]
    assert checks["job_store"]["ok"] is True


def test_the_queries_behind_the_api_work_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    s = seed(tmp_path / "data", database_url=postgres_url)
    try:
        client = TestClient(create_api(s.settings, s.store, s.celery, s.controls))
        login(client, "otto")
        jobs = client.get("/api/jobs", params={"state": "failed", "limit": 1}).json()
        assert jobs["total"] == 1 and jobs["jobs"][0]["id"] == s.failed_id
        exams = client.get("/api/exams").json()["exams"]
        assert [(e["study_uid"], e["n_series"]) for e in exams] == [
            ("1.2.3.200", 1),
            ("1.2.3.100", 1),
        ]
        assert client.get("/api/destinations").json()[0]["state"] == "ok"
        assert client.post(f"/api/jobs/{s.failed_id}/retry").status_code == 200
        text = client.get("/metrics").text
        values = {
            smp.name: smp.value for f in text_string_to_metric_families(text) for smp in f.samples
        }
        assert values["cordt1_instances_received_total"] == 6
        assert values["cordt1_queue_depth"] == 2
        checks = client.get("/readyz").json()["checks"]
        assert checks["job_store"] == {"ok": True, "detail": "postgresql reachable"}
    finally:
        s.store.close()


def test_five_wrong_passwords_make_the_name_wait(client: TestClient, seeded: Seeded) -> None:
    for _ in range(5):
        wrong = client.post("/api/login", json={"name": "otto", "password": "guess-guess"})
        assert wrong.status_code == 401
    right = client.post("/api/login", json={"name": "otto", "password": PASSWORDS["otto"]})
    assert right.status_code == 429
    assert 0 < int(right.headers["retry-after"]) <= 61
    login(client, "vera")  # other names are not affected
    client.cookies.clear()
    token = base64.b64encode(f"otto:{PASSWORDS['otto']}".encode()).decode()
    basic = client.get("/api/jobs", headers={"Authorization": f"Basic {token}"})
    assert basic.status_code == 429  # the same lock for HTTP Basic


def test_the_last_purge_is_in_the_metrics_and_the_queue_panel(
    client: TestClient, seeded: Seeded
) -> None:
    from service.jobs.retention import purge

    def values() -> dict[str, float]:
        text = client.get("/metrics").text
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    login(client, "vera")
    before = values()
    assert before["cordt1_purged_bytes_total"] == 0 and before["cordt1_purged_exams_total"] == 0
    assert before["cordt1_last_purge_timestamp_seconds"] == 0
    assert client.get("/api/queue").json()["retention"]["last_purge_at"] is None
    refused = seeded.settings.data_dir / "quarantine" / "refused.dcm"
    refused.parent.mkdir(parents=True, exist_ok=True)
    refused.write_bytes(b"q" * 4096)
    long_ago = time.time() - 400 * 86400
    os.utime(refused, (long_ago, long_ago))

    report = purge(seeded.settings, seeded.store, now=time.time() + 400 * 86400)

    assert report.bytes >= 4096 and not refused.exists()
    after = values()
    assert after["cordt1_purged_bytes_total"] == report.bytes
    assert after["cordt1_purged_exams_total"] == len(report.exams)
    assert after["cordt1_last_purge_timestamp_seconds"] == pytest.approx(time.time(), abs=60)
    panel = client.get("/api/queue").json()["retention"]
    assert panel["last_purge_bytes"] == report.bytes == panel["purged_bytes_total"]
