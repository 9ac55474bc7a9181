"""`cordt1 demo`: the whole path on one machine, with embedded defaults.

A simulated scanner (DCMTK ``storescu`` when installed, else our own SCU) sends a synthetic
patient exam to a freshly started ``cordt1 serve``; the results arrive in a PACS (Orthanc when
installed, else a folder receiver). Prints where everything is and how long it took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click
import pydicom

from dicom_node.scu import Destination, send
from service.inputs.protocol import load_site_protocols
from service.jobs.store import JobState, JobStore
from service.phantom import PhantomOptions, write_cohort
from service.phantom.pacs import free_port, start_pacs, wait_for_port
from service.pipeline.model_build import build_model

__all__ = ["run_demo", "send_folder", "write_service_config"]

SCANNER_AE = "SCANNER"
SERVICE_AE = "CORDT1"


def _say(message: str) -> None:
    click.echo(click.style("cordt1 demo: ", fg="cyan", bold=True) + message)


def write_service_config(
    path: Path,
    *,
    data_dir: Path,
    port: int,
    destination: str,
    site_protocols: Path,
    broker: str | None = None,
    database_url: str | None = None,
    model_dir: Path | None = None,
    settle_s: float = 2.0,
    api_port: int = 0,
) -> Path:
    """Write a TOML configuration for a local `cordt1 serve` (HTTP API on ``api_port``,
    0: a free port, written to ``data_dir/run/ready.json``)."""
    lines = [
        f'data_dir = "{data_dir}"',
        f'site_protocols = "{site_protocols}"',
        "workers = 1",
    ]
    if broker:
        lines.append(f'broker_url = "{broker}"')
    if database_url:
        lines.append(f'database_url = "{database_url}"')
    if model_dir:
        lines.append(f'model_dir = "{model_dir}"')
    lines += [
        "",
        "[node]",
        f'ae_title = "{SERVICE_AE}"',
        'host = "127.0.0.1"',
        f"port = {port}",
        f"settle_s = {settle_s}",
        "min_free_mb = 100",
        "",
        "[send]",
        f'destinations = ["{destination}"]',
        "attempts = 3",
        "retry_interval_s = 5",
        "",
        "[api]",
        'host = "127.0.0.1"',
        f"port = {api_port}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def dcmtk_tool(name: str) -> str | None:
    """Path of a DCMTK program (pynetdicom installs Python apps of the same names on PATH)."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        candidate = Path(folder) / name
        if candidate.exists() and "python" not in candidate.read_bytes()[:64].decode("latin-1"):
            return str(candidate)
    return None


def send_folder(folder: Path, port: int, *, calling_ae: str = SCANNER_AE) -> str:
    """Send every DICOM file under ``folder`` like a scanner; returns which tool sent it."""
    storescu = dcmtk_tool("storescu")
    files = sorted(folder.rglob("*.dcm"))
    if storescu:
        command = [
            storescu,
            "-aet",
            calling_ae,
            "-aec",
            SERVICE_AE,
            "+sd",
            "+r",
            "+sp",
            "*.dcm",
            "127.0.0.1",
            str(port),
            str(folder),
        ]
        env = {**os.environ, "TCP_NODELAY": "1"}
        completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"storescu failed ({completed.returncode}): {completed.stderr}")
        return "DCMTK storescu"
    send(files, Destination(SERVICE_AE, "127.0.0.1", port), calling_ae=calling_ae, timeout_s=60)
    return "cordt1 SCU (DCMTK not installed)"


def _wait_for_job(store: JobStore, study_uid: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job in store.list_jobs(limit=20):
            if job.study_uid == study_uid and job.state in (JobState.DONE, JobState.FAILED):
                return job.id
        time.sleep(0.2)
    raise TimeoutError(f"no finished job for the exam after {timeout_s:.0f} s")


def build_demo_model(workdir: Path, controls: int, matrix: int) -> Path:
    """A normative model from synthetic healthy controls of the same protocol."""
    started = time.monotonic()
    folder = workdir / "controls"
    write_cohort(
        folder,
        controls=controls,
        patients=0,
        follow_up=False,
        seed=7,
        options=PhantomOptions(matrix=matrix),
    )
    metadata = build_model(
        folder,
        workdir / "model",
        profiles=load_site_protocols(folder / "site-protocols.toml"),
        created_at=datetime.now(UTC),
        overwrite=True,
    )
    _say(
        f"normative model {metadata.model_version} built from {controls} synthetic healthy "
        f"controls in {time.monotonic() - started:.1f} s"
    )
    return workdir / "model"


def _result_uids(paths: list[str]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def _object_lines(paths: list[str]) -> list[str]:
    """One line per kind of result object, e.g. "2 x Parametric Map Storage"."""
    counts: dict[str, int] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        name = f"{ds.SOPClassUID.name} ({ds.get('SeriesDescription', '')})"
        counts[name] = counts.get(name, 0) + 1
    return [f"{n} x {name}" for name, n in sorted(counts.items())]


def run_demo(
    *,
    workdir: Path | None = None,
    broker: str | None = None,
    matrix: int = 448,
    controls: int = 6,
    keep_running: bool = False,
    timeout_s: float = 600.0,
) -> int:
    """Run the demo; returns a process exit code (0 when the results reached the PACS).

    ``controls`` synthetic healthy controls make the normative model first (0: T1 only).
    """
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="cordt1-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _say(f"working in {workdir}")

    started = time.monotonic()
    cohort_file = write_cohort(
        workdir / "scanner",
        controls=0,
        patients=1,
        follow_up=False,
        seed=2026,
        options=PhantomOptions(matrix=matrix),
    )
    cohort = json.loads(cohort_file.read_text())
    exam = cohort[0]["exams"][0]
    exam_dir = workdir / "scanner" / exam["exam_dir"] / "dicom"
    study_uid = exam["study_uid"]
    _say(f"simulated scanner made a 7 T MP2RAGE exam in {time.monotonic() - started:.1f} s")
    model_dir = build_demo_model(workdir, controls, matrix) if controls else None

    pacs = start_pacs(workdir / "pacs")
    _say(f"PACS ready: {type(pacs).__name__} as {pacs.destination}")
    port = free_port()
    config = write_service_config(
        workdir / "cordt1.toml",
        data_dir=workdir / "service",
        port=port,
        destination=pacs.destination,
        site_protocols=workdir / "scanner" / "site-protocols.toml",
        broker=broker,
        model_dir=model_dir,
    )
    service_log = (workdir / "service.log").open("ab")
    service = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--config", str(config), "serve"],
        stdout=service_log,
        stderr=subprocess.STDOUT,
    )
    code = 1
    try:
        wait_for_port(port, timeout_s=60)
        _say(f"cordt1 serve listening as {SERVICE_AE} on 127.0.0.1:{port}")
        sent_at = time.monotonic()
        tool = send_folder(exam_dir, port)
        _say(f"scanner sent {len(list(exam_dir.rglob('*.dcm')))} images with {tool}")
        store = JobStore(f"sqlite:///{workdir / 'service' / 'jobs.sqlite'}")
        job_id = _wait_for_job(store, study_uid, timeout_s)
        job = store.get_job(job_id)
        if job.state is JobState.FAILED:
            _say(click.style(f"job {job_id} FAILED: {job.error}", fg="red"))
            return 1
        expected = _result_uids(job.result["dicom"])
        deadline = time.monotonic() + 60
        while not expected <= pacs.sop_instance_uids(study_uid):
            if time.monotonic() > deadline:
                _say(click.style("results did not arrive in the PACS", fg="red"))
                return 1
            time.sleep(0.2)
        elapsed = time.monotonic() - sent_at
        summary = job.result["summary"]
        _say(
            click.style(f"results in the PACS {elapsed:.1f} s after the exam was sent", fg="green")
        )
        _say(f"{len(expected)} result objects stored in {pacs.where(study_uid)}:")
        for line in _object_lines(job.result["dicom"]):
            _say(f"  {line}")
        t1 = summary["t1_ms"]
        _say(
            f"mean T1 in the cord {t1.get('cord')} ms (white matter {t1.get('wm')} ms, "
            f"grey matter {t1.get('gm')} ms); QC {summary['qc']['verdict']}"
        )
        for reason in summary["qc"].get("reasons", []):
            _say(f"  QC note: {reason}")
        if "abnormal_percent" in summary:
            lesions = summary.get("lesion_summary", {})
            _say(
                f"abnormal voxels in the cord {summary['abnormal_percent'].get('cord')} % "
                f"(Z > {summary['z_threshold']}); {lesions.get('count', 0)} lesion "
                f"{lesions.get('source', 'candidate')}(s)"
            )
        _say(f"outputs (DICOM, figures, summary.json): {job.result['out_dir']}")
        _say("NIfTI copies for researchers: nifti_results = true, or cordt1 process")
        _say(f"job list: cordt1 --config {config} status")
        code = 0
        if keep_running:
            _say("running until Ctrl-C")
            service.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        service.terminate()
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
        pacs.stop()
    return code
