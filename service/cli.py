"""The `cordt1` command line: thin wrappers around library functions."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from service import __version__
from service.logs import LOG_LEVELS, configure_logging
from service.settings import Settings, load_settings, validation_lines

if TYPE_CHECKING:
    from service.jobs.store import JobStore

__all__ = ["main"]

log = logging.getLogger("cordt1")


def _use_logging_settings(settings: Settings, role: str | None = None) -> None:
    """Configure logging from the settings; ``role`` ("serve", "worker") adds the log file."""
    try:
        configure_logging(
            settings.log_level,
            log_format=settings.log_format,
            log_file=settings.log_file if role is not None else None,
            max_mb=settings.log_max_mb,
            backups=settings.log_backups,
            role=role or "serve",
        )
    except ValueError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc


class ProblemsError(click.ClickException):
    """Several problems, each shown as its own ``Error: ...`` line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines

    def show(self, file: Any = None) -> None:
        """Print one ``Error:`` line per problem to stderr."""
        for line in self.lines:
            click.echo(f"Error: {line}", err=True)


def _settings(ctx: click.Context, *, role: str | None = None, **overrides: Any) -> Settings:
    config: Path | None = ctx.obj.get("config")
    try:
        settings = load_settings(config, log_level=ctx.obj.get("log_level"), **overrides)
    except ValidationError as exc:
        raise ProblemsError(validation_lines(exc)) from exc
    except (FileNotFoundError, ValueError) as exc:
        raise ProblemsError(str(exc).splitlines()) from exc
    _use_logging_settings(settings, role)
    return settings


@click.group()
@click.version_option(__version__, prog_name="cordt1")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file (also $CORDT1_CONFIG).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="Overrides the log_level setting (default INFO).",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None, log_level: str | None) -> None:
    """cordt1: 7 T MP2RAGE cervical cord T1 maps and Z-score reports from DICOM."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["log_level"] = log_level.upper() if log_level else None
    configure_logging(ctx.obj["log_level"] or "INFO")  # until the settings are known


def _service_options(func: Any) -> Any:
    options = [
        click.option("--ae-title", default=None, help="Our AE title."),
        click.option("--port", type=int, default=None, help="DICOM port to listen on."),
        click.option("--host", default=None, help="Address to listen on."),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None),
        click.option(
            "--destination",
            "destinations",
            multiple=True,
            help="Result destination AET@HOST:PORT, tls://AET@HOST:PORT over TLS (repeatable).",
        ),
        click.option("--broker", default=None, help="Celery broker URL (e.g. redis://...)."),
        click.option("--database-url", default=None, help="Job store SQLAlchemy URL."),
        click.option("--site-protocols", type=click.Path(path_type=Path), default=None),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _overrides(
    ae_title: str | None,
    port: int | None,
    host: str | None,
    data_dir: Path | None,
    destinations: tuple[str, ...],
    broker: str | None,
    database_url: str | None,
    site_protocols: Path | None,
) -> dict[str, Any]:
    return {
        "node": {"ae_title": ae_title, "port": port, "host": host},
        "data_dir": data_dir,
        "send": {"destinations": list(destinations) or None},
        "broker_url": broker,
        "database_url": database_url,
        "site_protocols": site_protocols,
    }


@cli.command()
@_service_options
@click.option("--workers", type=int, default=None, help="Local worker processes (0: none).")
@click.pass_context
def serve(ctx: click.Context, workers: int | None, **flags: Any) -> None:
    """Receive exams by DICOM, process them and send the results."""
    from service.server import Service
    from service.startup import check_settings

    settings = _settings(ctx, role="serve", workers=workers, **_overrides(**flags))
    try:  # TLS files first: a missing certificate stops before anything is created
        if settings.node.tls is not None:
            settings.node.tls.server_tls()
        settings.send.client_tls()
    except ValueError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
    problems = check_settings(settings)
    for problem in problems:
        if problem.level == "warning":
            log.warning("%s", problem.line())
    errors = [f"cannot start: {p.line()}" for p in problems if p.level == "error"]
    if errors:
        raise ProblemsError(errors)
    try:
        service = Service(settings)
    except (OSError, ValueError) as exc:  # e.g. a TLS certificate file missing or unreadable
        raise click.ClickException(f"cannot start: {exc}") from exc
    try:
        service.run_forever()
    except (OSError, ValueError) as exc:  # e.g. a port taken since the check
        raise click.ClickException(f"cannot start: {exc}") from exc


@cli.command()
@_service_options
@click.option("--settings-json", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--concurrency", type=int, default=1, show_default=True)
@click.pass_context
def worker(ctx: click.Context, settings_json: Path | None, concurrency: int, **flags: Any) -> None:
    """Run a Celery worker that processes jobs (on this or another host)."""
    from celery.signals import worker_ready, worker_shutdown
    from sqlalchemy.exc import SQLAlchemyError

    from service.jobs.celery_app import create_app
    from service.jobs.heartbeat import Heartbeat
    from service.jobs.store import JobStore
    from service.pipeline.warmup import warm_up
    from service.pseudonym import pseudonym_key

    if settings_json is not None:
        settings = Settings.model_validate_json(settings_json.read_text())
        _use_logging_settings(settings, "worker")
    else:
        from service.startup import check_settings

        settings = _settings(ctx, role="worker", **_overrides(**flags))
        problems = check_settings(settings, ports=False)
        for problem in problems:
            if problem.level == "warning":
                log.warning("%s", problem.line())
        errors = [f"cannot start: {p.line()}" for p in problems if p.level == "error"]
        if errors:
            raise ProblemsError(errors)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # as `serve` does
        JobStore(settings.job_store_url).close()  # the schema is current (or refuse now)
        pseudonym_key(settings)  # the secret readable (or generated once) before the pool forks
    except ValueError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
    except SQLAlchemyError as exc:
        raise _store_unreachable(settings.job_store_url, exc) from exc
    app = create_app(settings)
    warm_up()  # before the pool forks: every child starts warm
    name = f"cordt1-{settings.node.ae_title}@{socket.gethostname()}-{os.getpid()}"
    heartbeat = Heartbeat(settings.data_dir, name)
    # Alive = consuming jobs: beat from Celery's "ready" until its warm shutdown.
    worker_ready.connect(lambda **_kwargs: heartbeat.start(), weak=False)
    worker_shutdown.connect(lambda **_kwargs: heartbeat.stop(), weak=False)
    try:
        _run_worker(app, settings, concurrency)
    finally:
        heartbeat.stop()


def _run_worker(app: Any, settings: Settings, concurrency: int) -> None:
    app.worker_main(
        [
            "worker",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"cordt1-{settings.node.ae_title}@%h",
        ]
    )


def _store_options(func: Any) -> Any:
    options = [
        click.option("--data-dir", type=click.Path(path_type=Path), default=None),
        click.option("--database-url", default=None, help="Job store SQLAlchemy URL."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _open_store(settings: Settings) -> JobStore:
    """The job store, or one clear error line (no store here yet, or the database is away)."""
    from service.jobs.store import JobStore
    from service.startup import job_store_problem

    if not settings.database_url and not settings.data_dir.is_dir():
        raise click.ClickException(
            f"no job store here: data_dir {settings.data_dir} does not exist (nothing has run "
            "with it yet); pass the --data-dir or --config that `cordt1 serve` uses"
        )
    problem = job_store_problem(settings)
    if problem is not None:
        raise click.ClickException(problem.line())
    return JobStore(settings.job_store_url)


def _service_alive(settings: Settings) -> dict[str, Any]:
    """Whether `serve` runs on this data_dir (its ready file names a live process)."""
    ready = settings.data_dir / "run" / "ready.json"
    try:
        pid = int(json.loads(ready.read_text())["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return {"running": False, "pid": None}
    return {"running": True, "pid": pid}


@cli.group()
def config() -> None:
    """The configuration: its generated reference."""


@config.command("reference")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the reference here (default: print it).",
)
@click.option(
    "--check",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Exit 1 unless this file is the current reference (docs/configuration.md).",
)
def config_reference(out: Path | None, check: Path | None) -> None:
    """Markdown reference of every setting, generated from the settings object."""
    from service.config_reference import render_reference

    text = render_reference()
    if check is not None:
        current = check.read_text() if check.is_file() else ""
        if current != text:
            raise click.ClickException(
                f"{check} is out of date: regenerate it with "
                f"`cordt1 config reference --out {check}`"
            )
        click.echo(f"{check} is current")
    elif out is not None:
        out.write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


def _store_unreachable(url: str, exc: Exception) -> click.ClickException:
    """The one-line error for a job store that cannot be opened (password hidden)."""
    from sqlalchemy.engine import make_url

    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    shown = make_url(url).render_as_string(hide_password=True)
    return click.ClickException(f"job store {shown} cannot be opened: {reason}")


@cli.group()
def db() -> None:
    """The job store's schema: its version, and upgrades (docs/operations.md)."""


@db.command("status")
@_store_options
@click.pass_context
def db_status(ctx: click.Context, data_dir: Path | None, database_url: str | None) -> None:
    """Show the job store's schema version and this cordt1's (exit 1 unless usable as is)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from service.jobs.schema import SchemaState, schema_number, schema_status

    settings = _settings(ctx, data_dir=data_dir, database_url=database_url)
    url = settings.job_store_url
    engine = create_engine(url)
    try:
        status = schema_status(engine)
    except SQLAlchemyError as exc:
        raise _store_unreachable(url, exc) from exc
    finally:
        engine.dispose()
    current = "none" if status.current is None else schema_number(status.current)
    if status.unversioned:
        current += " (made before schema versions were recorded)"
    click.echo(f"job store: {make_url(url).render_as_string(hide_password=True)}")
    click.echo(f"schema:    {current}")
    click.echo(f"head:      {schema_number(status.head)} (this cordt1)")
    click.echo(f"state:     {status.state.value}: {status.detail}")
    if status.state not in (SchemaState.CURRENT, SchemaState.EMPTY):
        ctx.exit(1)


@db.command("upgrade")
@_store_options
@click.pass_context
def db_upgrade(ctx: click.Context, data_dir: Path | None, database_url: str | None) -> None:
    """Bring the job store to this cordt1's schema (back it up first: docs/operations.md)."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from service.jobs.schema import SchemaError, schema_number, upgrade

    settings = _settings(ctx, data_dir=data_dir, database_url=database_url)
    engine = create_engine(settings.job_store_url)
    try:
        before, after = upgrade(engine)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise _store_unreachable(settings.job_store_url, exc) from exc
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"job store already at schema {schema_number(after)}")
    else:
        old = "none" if before is None else schema_number(before)
        click.echo(f"job store upgraded from schema {old} to {schema_number(after)}")


@cli.command()
@_store_options
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--stale", is_flag=True, help="Only running/sending jobs whose lease expired.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(
    ctx: click.Context,
    data_dir: Path | None,
    database_url: str | None,
    limit: int,
    stale: bool,
    as_json: bool,
) -> None:
    """List recent jobs and their states; flags jobs whose lease is stale (nobody on them)."""
    import time

    from service.jobs.heartbeat import alive_workers
    from service.jobs.operator import lease_text

    settings = _settings(ctx, data_dir=data_dir, database_url=database_url)
    store = _open_store(settings)
    service = _service_alive(settings)
    workers = alive_workers(settings.data_dir, settings.api.worker_heartbeat_s)
    now = time.time()
    jobs = store.stale_jobs(now)[:limit] if stale else store.list_jobs(limit=limit)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "service": service,
                    "workers_alive": workers,
                    "counts": store.counts(),
                    "stale": [j.id for j in store.stale_jobs(now)],
                    "jobs": [
                        {
                            "id": j.id,
                            "state": j.state.value,
                            "study_uid": j.study_uid,
                            "error": j.error,
                            "attempts": j.attempts,
                            "created_at": j.created_at,
                            "finished_at": j.finished_at,
                            "out_dir": j.result.get("out_dir"),
                            "lease_owner": j.lease_owner,
                            "lease_expires_at": j.lease_expires_at,
                            "lease_stale": j.lease_stale(now),
                        }
                        for j in jobs
                    ],
                },
                indent=2,
            )
        )
        return
    counts = store.counts()
    n_stale = len(store.stale_jobs(now))
    running = f"running (pid {service['pid']})" if service["running"] else "not running"
    click.echo(
        f"service: {running}  workers alive: {len(workers)}"
        + (f" ({', '.join(workers)})" if workers else "")
    )
    click.echo(
        "  ".join(f"{state}: {n}" for state, n in counts.items()) + f"  stale leases: {n_stale}"
    )
    for j in jobs:
        line = f"#{j.id:<5} {j.state.value:<9} study {j.study_uid}"
        lease = lease_text(j, now)
        if lease:
            line += f"  [{lease}]"
        if j.error:
            line += f"  error: {j.error}"
        click.echo(line)


@cli.command()
@_store_options
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.pass_context
def purge(
    ctx: click.Context, data_dir: Path | None, database_url: str | None, dry_run: bool
) -> None:
    """Delete old spool, results, quarantine and queue files now, as [retention] says.

    Only exams whose job is done and whose results every destination confirmed are touched;
    their job rows and summaries stay, marked purged. `serve` also purges periodically.
    """
    from service.jobs.retention import purge as run_purge

    settings = _settings(ctx, data_dir=data_dir, database_url=database_url)
    store = _open_store(settings)
    try:
        report = run_purge(settings, store, dry_run=dry_run)
    finally:
        store.close()
    for line in report.lines():
        click.echo(line)


def _operator_action(
    ctx: click.Context,
    data_dir: Path | None,
    database_url: str | None,
    broker: str | None,
    action: Any,
) -> None:
    """Run ``action(store, settings) -> (task, message)``, queue the task, print the message."""
    from service.jobs.celery_app import create_app
    from service.jobs.operator import OperatorError

    settings = _settings(ctx, data_dir=data_dir, database_url=database_url, broker_url=broker)
    store = _open_store(settings)
    try:
        task, job_id, message = action(store, settings)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    if task:
        create_app(settings).send_task(task, args=[job_id])
    click.echo(message)


@cli.command()
@click.argument("job_id", type=int)
@_store_options
@click.option("--broker", default=None, help="Celery broker URL (as `serve` uses).")
@click.option("--reason", default="no reason given", help="Recorded in the audit trail.")
@click.option("--reprocess", is_flag=True, help="Process the exam again even if results exist.")
@click.pass_context
def retry(
    ctx: click.Context,
    job_id: int,
    data_dir: Path | None,
    database_url: str | None,
    broker: str | None,
    reason: str,
    reprocess: bool,
) -> None:
    """Queue a job again: queued, failed, cancelled, or running/sending with a stale lease.

    A job with results resumes sending (only what a destination did not confirm goes out);
    otherwise, or with --reprocess, its exam is processed again.
    """
    from service.jobs.operator import operator_name, retry_job

    def action(store: Any, settings: Settings) -> tuple[str, int, str]:
        task = retry_job(
            store,
            job_id,
            operator=operator_name(),
            reason=reason,
            reprocess=reprocess,
            destinations=list(settings.send.destinations) or None,
        )
        step = "sending resumed" if task.endswith("send_results") else "queued again"
        return task, job_id, f"job {job_id} {step}"

    _operator_action(ctx, data_dir, database_url, broker, action)


@cli.command()
@click.argument("job_id", type=int)
@_store_options
@click.option("--reason", required=True, help="Why (recorded in the audit trail).")
@click.pass_context
def cancel(
    ctx: click.Context,
    job_id: int,
    data_dir: Path | None,
    database_url: str | None,
    reason: str,
) -> None:
    """End a job that is not finished (queued, running, sending) as cancelled."""
    from service.jobs.operator import cancel_job, operator_name

    def action(store: Any, settings: Settings) -> tuple[str, int, str]:
        cancel_job(store, job_id, operator=operator_name(), reason=reason)
        return "", job_id, f"job {job_id} cancelled"

    _operator_action(ctx, data_dir, database_url, None, action)


@cli.command()
@click.argument("job_id", type=int)
@_store_options
@click.option("--broker", default=None, help="Celery broker URL (as `serve` uses).")
@click.option(
    "--destination", default=None, help="Only to this AET@HOST:PORT (default: all of the job's)."
)
@click.option("--reason", default="no reason given", help="Recorded in the audit trail.")
@click.pass_context
def resend(
    ctx: click.Context,
    job_id: int,
    data_dir: Path | None,
    database_url: str | None,
    broker: str | None,
    destination: str | None,
    reason: str,
) -> None:
    """Send every result object of a job again (explicitly; retries never duplicate)."""
    from service.jobs.operator import operator_name, resend_job

    def action(store: Any, settings: Settings) -> tuple[str, int, str]:
        task = resend_job(
            store,
            job_id,
            operator=operator_name(),
            reason=reason,
            destination=destination,
            default_destinations=list(settings.send.destinations),
        )
        return task, job_id, f"job {job_id}: results queued to be sent again"

    _operator_action(ctx, data_dir, database_url, broker, action)


@cli.command()
@click.argument("input_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--site-protocols", type=click.Path(exists=True, path_type=Path), default=None)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Normative model directory (Z-scores, abnormal voxels, lesion candidates).",
)
@click.option("--z-threshold", type=float, default=None, help="Abnormal above this Z.")
@click.option(
    "--bids-out",
    "bids_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also export every exam's NIfTI results as BIDS derivatives into this folder.",
)
@click.option(
    "--lesions",
    "lesions",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    help="Reader lesion mask NIfTI, or a folder with one per slab (matched to the slab by "
    "grid; repeatable). INPUT_DIR must hold a single exam.",
)
@click.option(
    "--masks",
    "masks",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    help="Cord/GM/WM mask NIfTI (name containing cord, gm or wm, or a Spinal Cord Toolbox "
    "name: *_seg, *_gmseg, *_wmseg, *label-SC_seg, *label-GM_seg, *label-WM_seg), or a folder "
    "of them, used instead of the automatic segmentation (matched to the slab by grid; "
    "repeatable). INPUT_DIR must hold a single exam.",
)
@click.pass_context
def process(
    ctx: click.Context,
    input_dir: Path,
    out_dir: Path,
    site_protocols: Path | None,
    model_dir: Path | None,
    z_threshold: float | None,
    bids_dir: Path | None,
    lesions: tuple[Path, ...],
    masks: tuple[Path, ...],
) -> None:
    """Process every exam found in INPUT_DIR offline; outputs go to OUT_DIR/<study UID>/.

    The group table OUT_DIR/cordt1_regions.tsv (and, with --bids-out, one at the BIDS root)
    gets one row per exam, slab and region or level. Progress ("exam k of N: <study UID>")
    goes to stderr. Exits 1 when no exam is found or any exam failed.
    """
    from service.exports.offline import process_folder

    settings = _settings(
        ctx,
        site_protocols=site_protocols,
        model_dir=model_dir,
        z_threshold=z_threshold,
        bids_dir=bids_dir,
    )
    try:
        report = process_folder(
            input_dir,
            out_dir,
            settings,
            lesions=list(lesions) or None,
            masks=list(masks) or None,
            progress=lambda message: click.echo(message, err=True),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in report.lines():
        click.echo(line)
    if report.failed:
        click.echo(
            f"Error: {len(report.failed)} of {len(report.failed) + len(report.done)} exam(s) "
            "failed: " + "; ".join(f"{uid}: {error}" for uid, error in report.failed.items()),
            err=True,
        )
        raise click.exceptions.Exit(1)
    if not report.done:
        click.echo(f"Error: {report.none_found or 'no DICOM exam found'}", err=True)
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--controls", type=int, default=1, show_default=True)
@click.option("--patients", type=int, default=1, show_default=True)
@click.option("--follow-up", is_flag=True, help="Add a later exam per patient.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--matrix", type=int, default=448, show_default=True)
@click.option("--slices", "slices_per_slab", type=int, default=12, show_default=True)
@click.option("--slabs", type=click.IntRange(1, 2), default=2, show_default=True)
@click.option("--oblique-deg", type=float, default=0.0, show_default=True)
@click.option("--enhanced", is_flag=True, help="Enhanced MR multi-frame instead of single-frame.")
@click.option(
    "--transfer-syntax",
    type=click.Choice(["explicit", "implicit", "j2k", "rle", "jpegls"]),
    default="explicit",
    show_default=True,
)
@click.option("--protocol", default=None, help="Protocol preset name.")
@click.option("--b1-map", is_flag=True, default=None, help="Also write a B1 map series.")
@click.option(
    "--b1-grid",
    type=click.Choice(["same", "coarse"]),
    default=None,
    help="B1 map per slab on its grid (same) or one coarse map for the exam. [same]",
)
@click.option("--t2star", is_flag=True, default=None, help="Also write a multi-echo GRE per slab.")
@click.option(
    "--t2star-echo-times",
    "t2star_echo_times_ms",
    type=float,
    multiple=True,
    help="GRE echo time in ms (repeat per echo).  [default: 5 10 15 20]",
)
@click.option("--t2star-voxel-mm", type=float, default=None, help="GRE pixel spacing. [0.22]")
@click.option("--t2star-slice-mm", type=float, default=None, help="GRE slice thickness. [3]")
@click.option("--t2star-matrix", type=int, default=None, help="GRE matrix [covers the FOV].")
@click.option(
    "--t2star-combined", is_flag=True, default=None, help="One RSS image instead of echoes."
)
@click.option(
    "--t2star-shift-mm",
    type=(float, float, float),
    default=None,
    help="Subject shift X Y Z (LPS mm) during the GRE.",
)
@click.option("--t2star-snr", type=float, default=None, help="GRE first-echo WM SNR. [20]")
@click.option("--t2star-description", default=None, help="GRE SeriesDescription.")
@click.option(
    "--anatomy",
    type=click.Choice(["real", "simple"]),
    default=None,
    help="Real shapes (PAM50 cord in a real neck) or the analytic phantom. [real]",
)
def phantom(
    out_dir: Path, controls: int, patients: int, follow_up: bool, seed: int, **options: Any
) -> None:
    """Write synthetic 7 T MP2RAGE exams with ground truth."""
    from service.phantom import PhantomOptions, write_cohort

    values = {k: v for k, v in options.items() if v is not None and v != ()}
    try:
        phantom_options = PhantomOptions(**values)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    cohort = write_cohort(
        out_dir,
        controls=controls,
        patients=patients,
        follow_up=follow_up,
        seed=seed,
        options=phantom_options,
    )
    click.echo(f"cohort written: {cohort}")


@cli.group()
def model() -> None:
    """Normative models built from healthy controls."""


@model.command("build")
@click.argument("controls_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--site-protocols", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--overwrite", is_flag=True, help="Replace a model already in OUT.")
@click.pass_context
def model_build(
    ctx: click.Context,
    controls_dir: Path,
    out_dir: Path,
    site_protocols: Path | None,
    overwrite: bool,
) -> None:
    """Build a normative T1 model from the DICOM exams of healthy controls in CONTROLS_DIR."""
    from datetime import UTC, datetime

    from service.inputs.exam import ExamError
    from service.inputs.protocol import load_site_protocols
    from service.pipeline.model_build import build_model

    settings = _settings(ctx, site_protocols=site_protocols)
    try:
        profiles = load_site_protocols(settings.site_protocols)
    except (OSError, ValueError, TypeError) as exc:
        raise click.ClickException(
            f"site_protocols {settings.site_protocols} cannot be read: {exc}"
        ) from exc
    try:
        metadata = build_model(
            controls_dir,
            out_dir,
            profiles=profiles,
            created_at=datetime.now(UTC),
            overwrite=overwrite,
            progress=lambda message: click.echo(f"  {message}"),
        )
    except (ExamError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    excluded = list(metadata.extra.get("excluded_controls", []))
    left_out = f", {len(excluded)} left out (QC failed, listed above)" if excluded else ""
    click.echo(
        f"model {metadata.model_version}: {metadata.n_controls} controls{left_out}, protocol "
        f"{metadata.protocol_name!r}, written to {out_dir}"
    )


@cli.group()
def mp2rage() -> None:
    """The MP2RAGE signal model."""


@mp2rage.command("uni")
@click.option("--tr", type=float, required=True, help="TR_MP2RAGE (s).")
@click.option("--ti", type=float, nargs=2, required=True, help="TI1 TI2 (s).")
@click.option("--flip", type=float, nargs=2, required=True, help="Flip angles (deg).")
@click.option("--echo-spacing", type=float, required=True, help="Readout echo spacing (s).")
@click.option("--n-excitations", type=int, required=True, help="Excitations per block.")
@click.option("--efficiency", type=float, default=0.96, show_default=True)
@click.option("--b1", type=float, default=1.0, show_default=True, help="Relative B1+.")
@click.option("--t1", type=float, multiple=False, required=True, help="T1 values (s).")
@click.argument("more_t1", nargs=-1, type=float)
def mp2rage_uni(
    tr: float,
    ti: tuple[float, float],
    flip: tuple[float, float],
    echo_spacing: float,
    n_excitations: int,
    efficiency: float,
    b1: float,
    t1: float,
    more_t1: tuple[float, ...],
) -> None:
    """Print the UNI value (JSON list, [-0.5, 0.5]) of each T1 in seconds."""
    from processing.mp2rage import MP2RAGEProtocol, uni_from_t1

    try:
        protocol = MP2RAGEProtocol(
            tr_mp2rage_s=tr,
            ti1_s=ti[0],
            ti2_s=ti[1],
            flip1_deg=flip[0],
            flip2_deg=flip[1],
            echo_spacing_s=echo_spacing,
            n_excitations=n_excitations,
            efficiency=efficiency,
        )
        values = uni_from_t1([t1, *more_t1], protocol, b1)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps([round(float(v), 6) for v in values]))


@cli.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option("--broker", default=None, help="Celery broker (default: embedded).")
@click.option("--matrix", type=int, default=448, show_default=True)
@click.option(
    "--controls",
    type=int,
    default=6,
    show_default=True,
    help="Synthetic healthy controls for the normative model (0: T1 maps only).",
)
@click.option("--keep-running", is_flag=True, help="Leave the service and PACS running.")
def demo(
    workdir: Path | None, broker: str | None, matrix: int, controls: int, keep_running: bool
) -> None:
    """Start everything, send a synthetic exam from a simulated scanner, show the results."""
    from service.phantom.demo import run_demo

    code = run_demo(
        workdir=workdir,
        broker=broker,
        matrix=matrix,
        controls=controls,
        keep_running=keep_running,
    )
    if code:
        raise click.exceptions.Exit(code)


@cli.group()
def user() -> None:
    """Users of the web page and HTTP API (configured in [[api.users]])."""


@user.command("hash-password")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (scripts)."
)
def user_hash_password(password_stdin: bool) -> None:
    """Print a scrypt hash for an [[api.users]] entry's password_hash (asks for the password)."""
    from service.api.passwords import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        click.echo(hash_password(password))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cordt1` console script."""
    try:
        returned = cli.main(args=argv, prog_name="cordt1", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    # click hands back the exit code of `raise click.exceptions.Exit(n)` in this mode.
    return returned if isinstance(returned, int) else 0


if __name__ == "__main__":
    sys.exit(main())
