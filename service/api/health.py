"""Readiness checks for `/readyz`: job store, broker, spool disk and live workers."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from service.jobs.heartbeat import alive_workers
from service.jobs.store import JobStore, ping
from service.settings import Settings

__all__ = ["Check", "readiness"]

BROKER_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Check:
    """The outcome of one readiness check; ``detail`` says what is wrong or what was seen."""

    ok: bool
    detail: str


def check_job_store(store: JobStore) -> Check:
    """The job store answers ``SELECT 1``."""
    try:
        ping(store)
    except Exception as exc:  # any driver error means "not reachable"
        return Check(False, f"job store unreachable: {type(exc).__name__}: {_first_line(exc)}")
    return Check(True, f"{store.engine.dialect.name} reachable")


def check_broker(settings: Settings, celery: Celery) -> Check:
    """The broker accepts a connection (embedded queue: its folders are writable)."""
    url = settings.celery_broker_url
    if url.startswith("filesystem://"):
        folder = (settings.data_dir / "broker" / "queue").resolve()
        if folder.is_dir() and os.access(folder, os.W_OK):
            return Check(True, "embedded queue writable")
        return Check(False, f"embedded queue folder {folder} missing or not writable")
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_S
            )
    except Exception as exc:  # kombu raises the transport's own errors
        return Check(False, f"broker unreachable: {type(exc).__name__}: {_first_line(exc)}")
    return Check(True, "broker reachable")


def check_disk(settings: Settings) -> Check:
    """The spool's file system has more free space than ``node.min_free_mb``."""
    folder = settings.spool_dir if settings.spool_dir.exists() else settings.data_dir
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return Check(False, f"cannot read free space of {folder}: {exc}")
    needed = settings.node.min_free_mb * 1024 * 1024
    detail = f"{free // 1024**2} MiB free, receiver refuses below {settings.node.min_free_mb} MiB"
    return Check(free > needed, detail)


def check_workers(settings: Settings) -> Check:
    """At least one worker's heartbeat is recent."""
    alive = alive_workers(settings.data_dir, settings.api.worker_heartbeat_s)
    if not alive:
        return Check(
            False, f"no worker heartbeat in the last {settings.api.worker_heartbeat_s:g} s"
        )
    return Check(True, f"{len(alive)} worker(s) alive: {', '.join(alive)}")


def readiness(settings: Settings, store: JobStore, celery: Celery) -> dict[str, Check]:
    """Every readiness check by name."""
    return {
        "job_store": check_job_store(store),
        "broker": check_broker(settings, celery),
        "spool_disk": check_disk(settings),
        "workers": check_workers(settings),
    }


def disk_free_bytes(path: Path) -> int | None:
    """Free bytes of the file system holding ``path`` (None if unreadable)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""
