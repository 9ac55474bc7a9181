"""Deliver one job's result objects to one destination, each object recorded as it goes.

Every object's delivery is a row in the job store (job, run, SOP instance, destination,
status). An object is marked ``sending`` before its C-STORE and ``sent`` when the destination
confirms it, so after a crash or a timeout only unconfirmed objects are sent again. An object
left ``sending`` is *in doubt* (the destination may have stored it without our hearing the
answer): before sending it again we ask the destination with a C-FIND (Study Root, IMAGE
level) and send only what it does not hold. A destination that does not answer C-FIND gets
the in-doubt objects again (at most the objects in flight when the sender died).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from dicom_node.scu import Destination, SendError, send
from dicom_node.tls import ClientTls
from service.jobs.store import DeliveryStatus, JobStore

__all__ = ["DeliveryReport", "ResultObject", "deliver", "find_stored", "result_objects"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultObject:
    """One result file and the UIDs that name it."""

    path: Path
    study_uid: str
    series_uid: str
    sop_instance_uid: str


def result_objects(paths: Sequence[str | Path]) -> list[ResultObject]:
    """Read the UIDs of result files (headers only)."""
    objects = []
    for path in paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        objects.append(
            ResultObject(
                path=Path(path),
                study_uid=str(header.StudyInstanceUID),
                series_uid=str(header.SeriesInstanceUID),
                sop_instance_uid=str(header.SOPInstanceUID),
            )
        )
    return objects


@dataclass
class DeliveryReport:
    """What one delivery attempt to one destination did."""

    destination: str
    sent: int = 0
    already: int = 0
    found_in_doubt: int = 0
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        """Every object is confirmed at the destination."""
        return not self.errors and not self.interrupted


def find_stored(
    destination: Destination,
    objects: Sequence[ResultObject],
    *,
    calling_ae: str,
    timeout_s: float,
    tls: ClientTls | None = None,
) -> set[str] | None:
    """SOP Instance UIDs of ``objects`` the destination holds, by C-FIND; None if unknown.

    None when the destination refuses the association or the query model, or answers a
    query with a failure: then nothing can be concluded.
    """
    if not objects:
        return set()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    tls_args = (tls.context(), destination.host) if destination.tls and tls else None
    assoc = ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args
    )
    if not assoc.is_established:
        return None
    found: set[str] = set()
    try:
        for obj in objects:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = obj.study_uid
            query.SeriesInstanceUID = obj.series_uid
            query.SOPInstanceUID = obj.sop_instance_uid
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                code = int(status.Status) if status and "Status" in status else None
                if code is None or code not in (0x0000, 0xFF00, 0xFF01):
                    return None
                pending = code in (0xFF00, 0xFF01) and identifier is not None
                if pending and str(identifier.get("SOPInstanceUID", "")) == obj.sop_instance_uid:
                    found.add(obj.sop_instance_uid)
    except (RuntimeError, ValueError, AttributeError) as exc:
        log.info("C-FIND at %s failed: %s", destination, exc)
        return None
    finally:
        if assoc.is_established:
            assoc.release()
    return found


def deliver(
    store: JobStore,
    job_id: int,
    run: int,
    text: str,
    objects: Sequence[ResultObject],
    *,
    calling_ae: str,
    timeout_s: float,
    keep_going: Callable[[], bool] = lambda: True,
    tls: ClientTls | None = None,
) -> DeliveryReport:
    """Send to destination ``text`` every object of a run it has not confirmed.

    Parameters
    ----------
    store : JobStore
        Where each object's delivery is recorded.
    job_id, run : int
        The job and the run whose objects these are.
    text : str
        The destination, ``AET@HOST:PORT`` (already validated).
    objects : sequence of ResultObject
    calling_ae : str
    timeout_s : float
        Association and DIMSE timeout.
    keep_going : callable
        Asked before each object; False (the sender lost its lease) stops the delivery.
    tls : ClientTls or None
        TLS settings for a ``tls://`` destination (its C-FIND and C-STOREs).
    """
    destination = Destination.parse(text)
    report = DeliveryReport(destination=text)
    known = store.delivery_status(job_id, run, text)
    in_doubt = [o for o in objects if known.get(o.sop_instance_uid) is DeliveryStatus.SENDING]
    if in_doubt:
        stored = find_stored(
            destination, in_doubt, calling_ae=calling_ae, timeout_s=timeout_s, tls=tls
        )
        for uid in stored or set():
            store.record_delivery(
                job_id, run, uid, text, DeliveryStatus.SENT, "found at the destination (C-FIND)"
            )
            known[uid] = DeliveryStatus.SENT
            report.found_in_doubt += 1
    for obj in objects:
        uid = obj.sop_instance_uid
        if known.get(uid) is DeliveryStatus.SENT:
            report.already += 1
            continue
        if not keep_going():
            report.interrupted = True
            return report
        store.record_delivery(job_id, run, uid, text, DeliveryStatus.SENDING)
        try:
            send([obj.path], destination, calling_ae=calling_ae, timeout_s=timeout_s, tls=tls)
        except SendError as exc:
            outcome = exc.report.outcomes[0] if exc.report and exc.report.outcomes else None
            if outcome is not None and outcome.status is None:
                # no answer: the destination may hold it; stays "sending" (in doubt)
                store.record_delivery(
                    job_id, run, uid, text, DeliveryStatus.SENDING, outcome.detail
                )
            else:
                store.record_delivery(job_id, run, uid, text, DeliveryStatus.FAILED, exc.cause)
            report.errors.append(str(exc))
            if outcome is None:  # no association at all: the others would fail the same way
                return report
            continue
        store.record_delivery(job_id, run, uid, text, DeliveryStatus.SENT)
        report.sent += 1
    return report
