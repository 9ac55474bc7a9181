"""Corrected instances: an exam whose files changed after its job ran is processed again.

A scanner or PACS may send an instance again with the same SOP Instance UID: a corrected copy
(after a broken one failed the exam, or a fixed header) or an identical re-send. The spool
keeps the latest copy. Each run records what it read: a digest per series of the files'
bytes (:func:`input_digests`, in the job's result as ``input_digests``). When instances of a
finished job were received again, :func:`rerun_if_changed` compares the files now in the
spool with those digests: changed content queues a new run of the same job (a new
``results/job-N/run-M`` folder, published as ``current``, its objects delivered under the new
run number, so the job, API and page show the new results); identical content starts
nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.jobs.store import UNFINISHED, Job, JobState, JobStore

__all__ = ["DIGEST_KEY", "changed_series", "input_digests", "rerun_if_changed"]

log = logging.getLogger(__name__)

#: Key of the per-series digests in a job's result.
DIGEST_KEY = "input_digests"
_CHUNK_BYTES = 1 << 20


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def input_digests(paths: Mapping[str, Sequence[str | Path]]) -> dict[str, str]:
    """A digest of each series' files (names and bytes), as a run reads them.

    Parameters
    ----------
    paths : mapping
        Series Instance UID -> its spooled files (as :meth:`JobStore.instance_paths` gives).
        Files that no longer exist are left out (the run cannot read them either).

    Returns
    -------
    dict
        Series Instance UID -> hex digest (BLAKE2b); equal digests mean the same bytes.
    """
    out: dict[str, str] = {}
    for series_uid, files in paths.items():
        digest = hashlib.blake2b(digest_size=16)
        for path in sorted(Path(p) for p in files):
            if path.exists():
                digest.update(f"{path.name}\0{_file_digest(path)}\n".encode())
        out[series_uid] = digest.hexdigest()
    return out


def changed_series(job: Job, current: Mapping[str, str]) -> list[str]:
    """Series whose files differ from what the job's last run read (all without a record)."""
    recorded = job.result.get(DIGEST_KEY)
    if not isinstance(recorded, dict):
        return sorted(current)
    return sorted(uid for uid, digest in current.items() if recorded.get(uid) != digest)


def rerun_if_changed(store: JobStore, job: Job, *, series_names: Mapping[str, str]) -> bool:
    """Queue a new run of a finished job whose input files changed; whether it was queued.

    Parameters
    ----------
    store : JobStore
    job : Job
        A job some of whose instances were received again.
    series_names : mapping
        Series Instance UID -> how the event names it (number and description; no patient
        data).

    Returns
    -------
    bool
        ``True`` when the job was queued again (the caller sends the process task); ``False``
        for identical content, an unfinished job (its run reads the new files) or a cancelled
        one (the operator's decision stands; the event log says so).
    """
    if job.state in UNFINISHED:
        return False
    current = input_digests(store.instance_paths(job.series_uids))
    changed = changed_series(job, current)
    if not changed:
        log.info("job %d: instances received again with identical content; nothing to do", job.id)
        return False
    names = ", ".join(series_names.get(uid, uid) for uid in changed)
    if job.state is JobState.CANCELLED:
        store.log_event(
            "job.corrected",
            f"job {job.id}: corrected instance(s) of {names} received; the job was cancelled, "
            "so it is not processed again (retry it to do so)",
            job.id,
        )
        return False
    run = int(job.result.get("run", job.attempts))
    store.requeue(
        job.id,
        note=(
            f"queued again: corrected instance(s) of {names} received after run {run} "
            f"({job.state.value}); the new run supersedes it"
        ),
    )
    log.info("job %d queued again: corrected instance(s) of %d series", job.id, len(changed))
    return True
