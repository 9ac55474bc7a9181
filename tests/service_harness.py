"""Test helpers: a small phantom exam and `cordt1 serve` as a real subprocess."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from service.jobs.store import Job, JobState, JobStore
from service.phantom import PhantomOptions, write_cohort
from service.phantom.demo import write_service_config
from service.phantom.pacs import free_port, wait_for_port

SMALL_EXAM = PhantomOptions(matrix=160, slices_per_slab=6, slabs=2)


@dataclass(frozen=True)
class PhantomExam:
    """One synthetic exam on disk."""

    root: Path
    dicom_dir: Path
    truth_dir: Path
    study_uid: str
    site_protocols: Path


def make_exams(
    folder: Path, *, patients: int = 1, controls: int = 0, seed: int = 11, **options: Any
) -> list[PhantomExam]:
    """Write a phantom cohort and describe its exams."""
    phantom_options = dataclasses.replace(SMALL_EXAM, **options)
    cohort = json.loads(
        write_cohort(
            folder,
            controls=controls,
            patients=patients,
            follow_up=False,
            seed=seed,
            options=phantom_options,
        ).read_text()
    )
    exams = []
    for subject in cohort:
        for exam in subject["exams"]:
            exam_dir = folder / exam["exam_dir"]
            exams.append(
                PhantomExam(
                    root=exam_dir,
                    dicom_dir=exam_dir / "dicom",
                    truth_dir=exam_dir / "truth",
                    study_uid=exam["study_uid"],
                    site_protocols=folder / "site-protocols.toml",
                )
            )
    return exams


class ServiceProcess:
    """`cordt1 serve` in a subprocess, configured through a TOML file."""

    def __init__(
        self,
        workdir: Path,
        *,
        destination: str,
        site_protocols: Path,
        broker: str | None = None,
        database_url: str | None = None,
        extra_toml: str = "",
        workers: int = 1,
        model_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.config = write_service_config(
            workdir / "cordt1.toml",
            data_dir=self.data_dir,
            port=self.port,
            destination=destination,
            site_protocols=site_protocols,
            broker=broker,
            database_url=database_url,
            model_dir=model_dir,
            settle_s=1.0,
        )
        text = self.config.read_text().replace("workers = 1", f"workers = {workers}")
        self.config.write_text(text + extra_toml)
        self.store_url = database_url or f"sqlite:///{self.data_dir / 'jobs.sqlite'}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        """Start and wait until the DICOM port answers."""
        log = (self.workdir / "service.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--config", str(self.config), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        wait_for_port(self.port, timeout_s=60)
        return self

    def __enter__(self) -> ServiceProcess:
        return self if self.process and self.process.poll() is None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Warm shutdown."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        """Everything the service and its workers wrote (workers log to serve's stderr)."""
        path = self.workdir / "service.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def store(self) -> JobStore:
        """A connection to the service's job store."""
        return JobStore(self.store_url)

    def wait_for_jobs(
        self,
        predicate: Callable[[list[Job]], bool],
        timeout_s: float = 120.0,
    ) -> list[Job]:
        """Poll the job store until ``predicate(jobs)`` holds."""
        store = self.store()
        try:
            deadline = time.monotonic() + timeout_s
            jobs: list[Job] = []
            while time.monotonic() < deadline:
                try:
                    jobs = store.list_jobs(limit=100)
                except OperationalError:  # the job store restarts (fault tests): ask again
                    time.sleep(0.5)
                    continue
                if predicate(jobs):
                    return jobs
                time.sleep(0.2)
        finally:
            store.close()
        states = [(j.id, j.state.value, j.error) for j in jobs]
        raise AssertionError(f"timed out; jobs: {states}\n--- log ---\n{self.log_text()[-4000:]}")


def finished(jobs: list[Job]) -> bool:
    """At least one job and all of them done or failed."""
    return bool(jobs) and all(j.state in (JobState.DONE, JobState.FAILED) for j in jobs)


def storescu(
    port: int,
    paths: list[Path],
    *,
    calling_ae: str = "SCANNER",
    called_ae: str = "CORDT1",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu as a scanner (Nagle off, as a fair sender)."""
    from service.phantom.demo import dcmtk_tool

    binary = dcmtk_tool("storescu")
    assert binary, "DCMTK storescu is not installed (scripts/bootstrap.sh installs it)"
    command = [binary, "-aet", calling_ae, "-aec", called_ae, *extra]
    command += ["+sd", "+r", "127.0.0.1", str(port), *[str(p) for p in paths]]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}
    )
