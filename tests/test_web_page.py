"""The web page in the system Chromium (Playwright, no downloaded browser) and `serve`'s API."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.api.app import create_api
from service.api.server import ApiServer
from service.cli import cli
from service.exports.offline import process_folder
from service.jobs.store import JobState
from service.settings import Settings
from tests.api_fixtures import PASSWORDS, Seeded, seed
from tests.service_harness import make_exams


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the arguments only: no $CORDT1_CONFIG left by another test's load."""
    monkeypatch.delenv("CORDT1_CONFIG", raising=False)


CHROMIUM = Path("/usr/bin/chromium")
#: Set to a folder to keep the screenshots there (the README's come from this test).
SCREENSHOT_ENV = "CORDT1_SCREENSHOTS"


@pytest.fixture(scope="module")
def processed_exam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A phantom exam processed offline: its results folder and summary."""
    root = tmp_path_factory.mktemp("exam")
    [exam] = make_exams(root / "phantom")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CORDT1_CONFIG", raising=False)
        settings = Settings(data_dir=root, site_protocols=exam.site_protocols)
    report = process_folder(exam.dicom_dir, root / "out", settings)
    assert not report.failed, report.failed
    out_dir = root / "out" / exam.study_uid
    return out_dir, json.loads((out_dir / "summary.json").read_text())


@pytest.fixture
def served(tmp_path: Path, processed_exam: tuple[Path, dict]) -> Iterator[tuple[Seeded, str]]:
    out_dir, summary = processed_exam
    s = seed(tmp_path / "data", out_dir=out_dir, summary=summary)
    server = ApiServer(create_api(s.settings, s.store, s.celery, s.controls), "127.0.0.1", 0)
    server.start()
    yield s, f"http://127.0.0.1:{server.port}"
    server.stop()
    s.store.close()


def _screenshot(page: object, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))  # type: ignore[attr-defined]
    keep = os.environ.get(SCREENSHOT_ENV)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="system Chromium not installed")
def test_operator_logs_in_sees_the_report_and_retries_a_failed_job(
    served: tuple[Seeded, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    s, url = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#app")).to_be_hidden()
        page.fill("#login-name", "otto")
        page.fill("#login-password", "not the password")
        page.click("#login-form button[type=submit]")
        expect(page.locator("#login-error")).to_have_text("Wrong name or password.")
        page.fill("#login-password", PASSWORDS["otto"])
        page.click("#login-form button[type=submit]")
        expect(page.locator("#who")).to_have_text("otto (operator)")
        failed_row = page.locator(f"tr[data-job-id='{s.failed_id}']")
        expect(failed_row).to_contain_text("failed")
        expect(failed_row).to_contain_text("no received file is left")
        done_row = page.locator(f"tr[data-job-id='{s.done_id}']")
        expect(done_row).to_contain_text("done")
        expect(done_row).to_contain_text("key100")  # the pseudonymous key, not a name
        done_row.click()
        expect(page.locator("#detail-title")).to_have_text(f"Job #{s.done_id}")
        expect(page.locator("#detail-facts")).to_contain_text("compute")
        # why QC warned, not only that it did (this exam has no B1 map)
        expect(page.locator("#detail-facts")).to_contain_text(
            "warn: T1 is not corrected for B1+ inhomogeneity (no B1 map)"
        )
        figures = page.locator("#detail-figures img")
        expect(figures.first).to_be_visible()
        assert figures.count() >= 2
        # Polled from here: a string predicate polled in the page needs eval, which the
        # page's Content-Security-Policy (rightly) forbids.
        deadline = time.monotonic() + 15
        loaded = "img => img.complete && img.naturalWidth > 100"
        while not all(img.evaluate(loaded) for img in figures.all()):
            assert time.monotonic() < deadline, "report figures did not load"
            time.sleep(0.1)
        expect(page.locator("#detail-pdf a")).to_have_attribute(
            "href", f"/api/jobs/{s.done_id}/files/report.pdf"
        )
        text = page.locator("body").inner_text()
        assert "PAT-" not in text and "Phantom^" not in text  # no patient IDs or names
        shot = _screenshot(page, tmp_path, "web-page.png")
        assert shot.stat().st_size > 20_000
        failed_row.locator("button.retry").click()
        expect(page.locator("#message")).to_have_text(f"Job #{s.failed_id} queued again.")
        expect(failed_row).to_contain_text("queued")
        expect(failed_row.locator("button.retry")).to_have_count(0)
        expect(failed_row.locator("button.cancel")).to_have_count(1)  # queued: may be cancelled
        done_row = page.locator(f"tr[data-job-id='{s.done_id}']")
        expect(done_row.locator("button.resend")).to_have_count(1)
        assert s.store.get_job(s.failed_id).state is JobState.QUEUED
        page.click("#processing-toggle")
        expect(page.locator("#processing-state")).to_contain_text("paused by otto")
        assert s.controls.is_paused("processing")
        # A viewer sees the same page without any action.
        page.click("#logout")
        expect(page.locator("#login")).to_be_visible()
        page.fill("#login-name", "vera")
        page.fill("#login-password", PASSWORDS["vera"])
        page.click("#login-form button[type=submit]")
        expect(page.locator("#who")).to_have_text("vera (viewer)")
        expect(page.locator(f"tr[data-job-id='{s.done_id}']")).to_be_visible()
        expect(page.locator("#processing-toggle")).to_be_hidden()
        expect(page.locator("button.retry")).to_have_count(0)
        expect(page.locator("button.cancel, button.resend")).to_have_count(0)
        browser.close()
    assert errors == []
    audit = [e["message"] for e in s.store.events(limit=20)]
    assert f"job {s.failed_id} (failed) retry by otto: from the web page" in audit
    assert "processing paused by otto" in audit


def test_serve_stops_with_one_line_when_the_api_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORDT1_API__PORT", raising=False)  # the configuration's port counts
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "cordt1.toml"
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\nworkers = 0\n'
            'pseudonym_secret = "a-test-site-secret-of-32-chars!!"\n[node]\nport = 0\n'
            f'host = "127.0.0.1"\n[api]\nport = {port}\n'
        )
        result = CliRunner().invoke(cli, ["--config", str(config), "serve"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [
        f"Error: cannot start: api.port: cannot listen on 127.0.0.1:{port}: Address already in "
        "use; set api.port to a free port or api.enabled = false"
    ]


@pytest.mark.slow
def test_serve_answers_healthz_and_becomes_ready_when_its_worker_beats(tmp_path: Path) -> None:
    config = tmp_path / "cordt1.toml"
    data_dir = tmp_path / "data"
    config.write_text(
        f'data_dir = "{data_dir}"\nworkers = 1\n[node]\nport = 0\nhost = "127.0.0.1"\n'
        "min_free_mb = 1\n[api]\nport = 0\n"
    )
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--config", str(config), "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ready_file = data_dir / "run" / "ready.json"
        deadline = time.monotonic() + 60
        while not ready_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        http_port = json.loads(ready_file.read_text())["http_port"]
        base = f"http://127.0.0.1:{http_port}"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "ok"}
        status = 0
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                    status = response.status
                    break
            except urllib.error.HTTPError as exc:
                status = exc.code
                time.sleep(0.5)
        assert status == 200, (tmp_path / "serve.log").read_text()
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            assert b"cordt1_workers_alive 1.0" in response.read()
    finally:
        process.terminate()
        process.wait(timeout=90)
    assert not list((data_dir / "run" / "workers").glob("*.json"))  # stopped: not alive
