"""The FastAPI application: jobs, actions, exams, destinations, health, metrics and the page.

Build it with :func:`create_api`; `cordt1 serve` runs it with :mod:`service.api.server`.
The OpenAPI description is at ``/openapi.json`` (no Swagger UI: it loads from a CDN).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from celery import Celery
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from service import __version__
from service.api import actions
from service.api.auth import SESSION_COOKIE, Sessions, User
from service.api.controls import Controls
from service.api.health import readiness
from service.api.metrics import metrics_registry
from service.api.models import (
    Action,
    AuditLine,
    CheckResult,
    Control,
    Destination,
    ExamReceived,
    Exams,
    Health,
    JobDetail,
    JobList,
    JobSummary,
    Login,
    Me,
    Queue,
    Readiness,
    Retention,
)
from service.api.views import (
    MEDIA_TYPES,
    control_view,
    destination_view,
    job_detail,
    job_summary,
    report_files,
)
from service.jobs.heartbeat import alive_workers
from service.jobs.retention import purge_totals
from service.jobs.store import Job, JobState, JobStore, job_page, received_exams, recent_events
from service.settings import Settings

__all__ = ["WEB_DIR", "create_api"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: The page loads only its own files; nothing may frame it.
CSP = "default-src 'self'; img-src 'self'; object-src 'none'; frame-ancestors 'none'"
UNAUTHORIZED = {401: {"description": "Not logged in."}}
FORBIDDEN = {403: {"description": "Logged in as a viewer: operators only."}}
NOT_FOUND = {404: {"description": "No such job."}}


def _user(request: Request) -> User:
    sessions: Sessions = request.app.state.sessions
    return sessions.from_request(request)


def _operator(who: Annotated[User, Depends(_user)]) -> User:
    if not who.may_act:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{who.name} is a viewer")
    return who


ViewerDep = Annotated[User, Depends(_user)]
OperatorDep = Annotated[User, Depends(_operator)]


def create_api(settings: Settings, store: JobStore, celery: Celery, controls: Controls) -> FastAPI:
    """The HTTP API and web page on this job store, Celery app and pause switches.

    Parameters
    ----------
    settings : Settings
        ``settings.api`` holds the users; the rest is read for the checks and destinations.
    store : JobStore
    celery : Celery
        Used to queue retried jobs and to reach the broker in `/readyz`.
    controls : Controls
        The pause switches the receiver and the dispatcher obey.
    """
    app = FastAPI(
        title="cordt1",
        version=__version__,
        description="Jobs, actions, health and metrics of a cordt1 service. Patients appear "
        "only by their pseudonymous key.",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: the spec is at /openapi.json
        redoc_url=None,
    )
    sessions = Sessions(settings.api)
    registry = metrics_registry(settings, store, controls)

    app.state.sessions = sessions

    @app.middleware("http")
    async def _security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(SQLAlchemyError)
    async def _store_down(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": f"job store unreachable: {type(exc).__name__}"},
        )

    # --- health and metrics (no login: no patient data) ----------------------------------
    @app.get("/healthz", tags=["health"])
    def healthz() -> Health:
        """The process is up and answering."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["health"],
        responses={503: {"model": Readiness, "description": "A check failed."}},
    )
    def readyz() -> JSONResponse:
        """Job store, broker, spool disk and at least one live worker."""
        checks = readiness(settings, store, celery)
        body = Readiness(
            ready=all(c.ok for c in checks.values()),
            checks={k: CheckResult(ok=c.ok, detail=c.detail) for k, c in checks.items()},
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text."}},
    )
    def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # --- login ---------------------------------------------------------------------------
    @app.post(
        "/api/login",
        tags=["login"],
        responses={
            **UNAUTHORIZED,
            400: {"description": "The body is not JSON."},
            429: {"description": "Too many wrong passwords for this name: wait."},
        },
    )
    def login(body: Login, response: Response) -> Me:
        """Log in a configured user; sets an HttpOnly, SameSite=Strict session cookie.

        After 5 wrong passwords in a row a name must wait 60 s (answer 429, Retry-After).
        """
        wait_s = sessions.locked_for_s(body.name)
        if wait_s > 0:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                "too many wrong passwords: try again later",
                headers={"Retry-After": str(int(wait_s) + 1)},
            )
        found = sessions.check_password(body.name, body.password)
        sessions.record_login(body.name, found is not None)
        if found is None:
            store.log_event("api.login_failed", f"failed login as {body.name[:64]!r}")
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong name or password")
        response.set_cookie(
            SESSION_COOKIE,
            sessions.open(found),
            max_age=sessions.lifetime_s,
            httponly=True,
            samesite="strict",
            path="/",
        )
        store.log_event("api.login", f"{found.name} ({found.role}) logged in")
        return Me(name=found.name, role=found.role)  # type: ignore[arg-type]

    @app.post("/api/logout", tags=["login"], status_code=204)
    def logout(request: Request, response: Response) -> None:
        """End the session."""
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            sessions.close(token)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")

    @app.get("/api/me", tags=["login"], responses=UNAUTHORIZED)
    def me(who: ViewerDep) -> Me:
        """Who is logged in."""
        return Me(name=who.name, role=who.role)  # type: ignore[arg-type]

    # --- jobs ----------------------------------------------------------------------------
    @app.get("/api/jobs", tags=["jobs"], responses=UNAUTHORIZED)
    def list_jobs(
        _who: ViewerDep,
        state: Annotated[list[JobState] | None, Query()] = None,
        study_uid: Annotated[str | None, Query(max_length=64)] = None,
        patient_key: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> JobList:
        """Jobs, newest first, filtered by state(s), study or patient key, one page at a time."""
        jobs, total = job_page(
            store,
            states=state,
            study_uid=study_uid,
            patient_key=patient_key,
            limit=limit,
            offset=offset,
        )
        now = time.time()
        return JobList(
            total=total, offset=offset, limit=limit, jobs=[job_summary(j, now) for j in jobs]
        )

    def _job(job_id: int) -> Job:
        try:
            return store.get_job(job_id)
        except KeyError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}") from exc

    @app.get("/api/jobs/{job_id}", tags=["jobs"], responses={**UNAUTHORIZED, **NOT_FOUND})
    def get_job(job_id: int, _who: ViewerDep) -> JobDetail:
        """A job with stage timings, error, outputs, deliveries and its audit trail."""
        return job_detail(store, _job(job_id), time.time())

    @app.get(
        "/api/jobs/{job_id}/files/{name}",
        tags=["jobs"],
        response_class=FileResponse,
        responses={
            **UNAUTHORIZED,
            404: {"description": "No such job or file."},
            200: {"content": {"image/png": {}, "application/pdf": {}}},
        },
    )
    def job_file(job_id: int, name: str, _who: ViewerDep) -> FileResponse:
        """A rendered report file (PNG figure or PDF page) of the job's results."""
        for path in report_files(_job(job_id)):
            if path.name == name:
                return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no file {name!r}")

    def _act(job_id: int, run: Callable[[], Job]) -> JobSummary:
        try:
            job = run()
        except actions.OperatorError as exc:
            code = 404 if str(exc).startswith("no job") else status.HTTP_409_CONFLICT
            raise HTTPException(code, str(exc)) from exc
        return job_summary(job, time.time())

    conflict = {
        400: {"description": "The body is not valid JSON."},
        409: {"description": "Not possible in the job's state (the reason says why)."},
    }

    @app.post(
        "/api/jobs/{job_id}/retry",
        tags=["actions"],
        responses={**UNAUTHORIZED, **FORBIDDEN, **NOT_FOUND, **conflict},
    )
    def retry(job_id: int, who: OperatorDep, body: Action | None = None) -> JobSummary:
        """Queue a job again: a failed, cancelled, queued one or one whose lease is stale
        (results not yet confirmed are sent, otherwise the exam is processed again)."""
        reason = (body or Action()).reason
        destinations = list(settings.send.destinations)
        return _act(
            job_id,
            lambda: actions.retry(store, celery, job_id, who.name, reason, destinations),
        )

    @app.post(
        "/api/jobs/{job_id}/cancel",
        tags=["actions"],
        responses={**UNAUTHORIZED, **FORBIDDEN, **NOT_FOUND, **conflict},
    )
    def cancel(job_id: int, who: OperatorDep, body: Action | None = None) -> JobSummary:
        """End an unfinished job as cancelled (a worker on it stops publishing and sending)."""
        reason = (body or Action()).reason
        return _act(job_id, lambda: actions.cancel(store, job_id, who.name, reason))

    @app.post(
        "/api/jobs/{job_id}/resend",
        tags=["actions"],
        responses={**UNAUTHORIZED, **FORBIDDEN, **NOT_FOUND, **conflict},
    )
    def resend(job_id: int, who: OperatorDep, body: Action | None = None) -> JobSummary:
        """Send every result object of a job again, to one destination or all of them."""
        action = body or Action()
        defaults = list(settings.send.destinations)
        return _act(
            job_id,
            lambda: actions.resend(
                store, celery, job_id, who.name, action.reason, action.destination, defaults
            ),
        )

    # --- pause and resume ----------------------------------------------------------------
    @app.get("/api/control", tags=["actions"], responses=UNAUTHORIZED)
    def control(_who: ViewerDep) -> Control:
        """Whether intake and processing are paused."""
        return control_view(controls)

    @app.post(
        "/api/control/{part}/{action}",
        tags=["actions"],
        responses={**UNAUTHORIZED, **FORBIDDEN},
    )
    def pause_or_resume(
        part: Literal["intake", "processing"],
        action: Literal["pause", "resume"],
        who: OperatorDep,
    ) -> Control:
        """Pause or resume intake (associations rejected, transient) or processing (no new
        jobs dispatched); operators; audited with the user."""
        controls.set(part, action == "pause", who.name)
        store.log_event(f"operator.{action}", f"{part} {action}d by {who.name}")
        return control_view(controls)

    # --- queue, exams, destinations ------------------------------------------------------
    @app.get("/api/queue", tags=["jobs"], responses=UNAUTHORIZED)
    def queue(_who: ViewerDep) -> Queue:
        """Jobs by state, queue depth, live workers, pause state, the unfinished jobs and the
        last retention purge (when, bytes freed) with the totals."""
        counts = store.counts()
        active, _ = job_page(
            store, states=[JobState.QUEUED, JobState.RUNNING, JobState.SENDING], limit=100
        )
        now = time.time()
        purged = purge_totals(store)
        return Queue(
            counts=counts,
            queue_depth=counts[JobState.QUEUED.value],
            workers_alive=alive_workers(settings.data_dir, settings.api.worker_heartbeat_s),
            control=control_view(controls),
            active=[job_summary(j, now) for j in active],
            retention=Retention(
                last_purge_at=purged.last_at,
                last_purge_bytes=purged.last_bytes,
                purged_bytes_total=purged.bytes,
                purged_exams_total=purged.exams,
            ),
        )

    @app.get("/api/exams", tags=["exams"], responses=UNAUTHORIZED)
    def exams(_who: ViewerDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Exams:
        """Studies recently received, and the latest associations and refused C-STOREs."""
        return Exams(
            exams=[ExamReceived(**row) for row in received_exams(store, limit=limit)],
            associations=[
                AuditLine(time=e["time"], kind=e["kind"], message=e["message"])
                for e in recent_events(store, ["association", "store.refused"], limit=limit)
            ],
        )

    @app.get("/api/destinations", tags=["exams"], responses=UNAUTHORIZED)
    def destinations(_who: ViewerDep) -> list[Destination]:
        """Configured result destinations and their last delivery or failure."""
        return [destination_view(store, text) for text in settings.send.destinations]

    # --- the page ------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/web/index.html")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    return app
