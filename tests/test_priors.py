"""Priors from the PACS: which study (service.pipeline.history) and C-FIND + C-MOVE against
Orthanc."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_node.query import QueryError, find_studies, move_study
from dicom_node.scu import Destination, SendError, send
from service.jobs.priors import fetch_prior
from service.phantom.pacs import OrthancPacs, OrthancTls, free_port, orthanc_binary
from service.pipeline.history import choose_prior_study, prior_search_dates
from service.server import Service
from service.settings import load_settings
from tests.test_dicom_node_factories import make_mr
from tests.tls_factory import OPENSSL, make_pki


@dataclass(frozen=True)
class _Study:
    study_uid: str
    study_date: str
    study_time: str = "120000"


CURRENT = ("20240601", "090000")


def _choose(matches: list[_Study], **kwargs: object) -> _Study | None:
    options: dict[str, object] = {
        "current_study_uid": "9.9",
        "moment": CURRENT,
        "max_age_days": 3650,
    }
    options.update(kwargs)
    return choose_prior_study(matches, **options)  # type: ignore[arg-type, return-value]


def test_the_latest_earlier_study_is_the_prior() -> None:
    studies = [_Study("1.1", "20230101"), _Study("1.2", "20240101"), _Study("1.3", "20220101")]
    assert _choose(studies) == studies[1]


def test_the_current_study_later_studies_and_undated_ones_are_never_the_prior() -> None:
    studies = [
        _Study("9.9", "20240101"),  # the current exam itself
        _Study("1.4", "20240701"),  # taken later
        _Study("1.5", "20240601", "100000"),  # same day, later
        _Study("1.6", ""),  # undated
    ]
    assert _choose(studies) is None
    same_day_earlier = _Study("1.7", "20240601", "080000")
    assert _choose([*studies, same_day_earlier]) == same_day_earlier


def test_too_old_studies_and_studies_we_have_are_not_fetched() -> None:
    old = _Study("1.1", "20200101")
    assert _choose([old], max_age_days=365) is None
    assert _choose([old], max_age_days=3650) == old
    assert _choose([old], have_study_uids={"1.1"}) is None
    assert _choose([old], moment=("", "")) is None  # no date: no "before"


def test_search_dates() -> None:
    assert prior_search_dates("20240301", 30) == ("20240131", "20240301")
    assert prior_search_dates("", 30) is None
    assert prior_search_dates("2024-03-01", 30) is None
    with pytest.raises(ValueError, match="max_age_days"):
        prior_search_dates("20240301", 0)


def test_settings_refuse_a_malformed_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="AET@HOST:PORT"):
        load_settings(data_dir=tmp_path, priors={"source": "orthanc:4242"})
    settings = load_settings(data_dir=tmp_path, priors={"source": "PACS@127.0.0.1:4242"})
    assert settings.priors.destination() == Destination("PACS", "127.0.0.1", 4242)
    assert load_settings(data_dir=tmp_path).priors.destination() is None


def test_an_unreachable_pacs_is_a_query_error() -> None:
    nobody = Destination("PACS", "127.0.0.1", free_port())
    with pytest.raises(QueryError, match="connection refused"):
        find_studies(nobody, calling_ae="CORDT1", patient_id="P", timeout_s=2)


# ---------------------------------------------------------------- against Orthanc
@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    if orthanc_binary() is None:
        pytest.skip("Orthanc is not installed")
    pacs = OrthancPacs.start(tmp_path_factory.mktemp("priors") / "orthanc")
    try:
        yield pacs
    finally:
        pacs.stop()


def _exam(patient_id: str, study_date: str, n: int = 3) -> list:
    study, series = generate_uid(), generate_uid()
    exam = [
        make_mr(study_uid=study, series_uid=series, instance_number=i + 1, patient_id=patient_id)
        for i in range(n)
    ]
    for ds in exam:
        ds.StudyDate, ds.StudyTime = study_date, "100000"
    return exam


def _put_modality(pacs: OrthancPacs, ae_title: str, port: int, *, tls: bool = False) -> None:
    modality = {"AET": ae_title, "Host": "127.0.0.1", "Port": port, "UseDicomTls": tls}
    body = json.dumps(modality).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{pacs.http_port}/modalities/{ae_title}", data=body, method="PUT"
    )
    token = base64.b64encode(f"{pacs.user}:{pacs.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_the_prior_is_found_and_moved_from_orthanc_into_our_store(
    orthanc: OrthancPacs, tmp_path: Path
) -> None:
    patient = f"PRIOR-{generate_uid()[-8:]}"
    older, prior, current = (
        _exam(patient, "20230101"),
        _exam(patient, "20240101"),
        _exam(patient, "20240601"),
    )
    other_patient = _exam(f"OTHER-{generate_uid()[-8:]}", "20240102")
    pacs = Destination.parse(orthanc.destination)
    for exam in (older, prior, current, other_patient):
        assert send(exam, pacs, calling_ae="CORDT1").n_stored == len(exam)
    settings = load_settings(
        data_dir=tmp_path / "data",
        node={"host": "127.0.0.1", "port": 0, "min_free_mb": 0, "record_flush_ms": 10},
        priors={"source": orthanc.destination, "max_age_days": 400, "timeout_s": 30},
    )
    service = Service(settings)
    service.scp.start()
    try:
        assert service.scp.port is not None
        _put_modality(orthanc, settings.node.ae_title, service.scp.port)
        found = find_studies(
            pacs,
            calling_ae="CORDT1",
            patient_id=patient,
            issuer_of_patient_id="HOSP",
            date_range=("20230601", "20240601"),
        )
        assert {m.study_uid for m in found} == {
            prior[0].StudyInstanceUID,
            current[0].StudyInstanceUID,
        }
        fetched = fetch_prior(
            settings,
            patient_id=patient,
            issuer_of_patient_id="HOSP",
            current_study_uid=current[0].StudyInstanceUID,
            moment=("20240601", "100000"),
        )
        assert fetched is not None
        assert (fetched.study_uid, fetched.study_date, fetched.instances) == (
            prior[0].StudyInstanceUID,
            "20240101",
            3,
        )
        assert service.batcher.flush()
        arrived = {i["sop_instance_uid"] for i in service.store.instance_infos()}
        assert arrived == {ds.SOPInstanceUID for ds in prior}
        again = fetch_prior(
            settings,
            patient_id=patient,
            issuer_of_patient_id="HOSP",
            current_study_uid=current[0].StudyInstanceUID,
            moment=("20240601", "100000"),
            have_study_uids={prior[0].StudyInstanceUID},
        )
        assert again is None
    finally:
        service.scp.stop()
        service.batcher.close()


@pytest.mark.slow
def test_the_prior_is_fetched_from_orthanc_over_tls(tmp_path: Path) -> None:
    """C-FIND and C-MOVE over DICOM TLS; the moved instances come back over TLS too."""
    if orthanc_binary() is None or OPENSSL is None:
        pytest.skip("Orthanc or openssl is not installed")
    pki = make_pki(tmp_path / "pki")
    pacs = OrthancPacs.start(
        tmp_path / "orthanc",
        tls=OrthancTls(pki.server_cert, pki.server_key, pki.ca_cert),
    )
    settings = load_settings(
        data_dir=tmp_path / "data",
        node={
            "host": "127.0.0.1",
            "port": 0,
            "min_free_mb": 0,
            "record_flush_ms": 10,
            "tls": {
                "port": 0,
                "certificate": str(pki.server_cert),
                "private_key": str(pki.server_key),
                "ca_certificates": str(pki.ca_cert),
                "require_client_certificate": True,
            },
        },
        send={
            "tls": {
                "ca_certificates": str(pki.ca_cert),
                "certificate": str(pki.client_cert),
                "private_key": str(pki.client_key),
            }
        },
        priors={"source": f"tls://{pacs.destination}", "max_age_days": 400, "timeout_s": 30},
    )
    patient = f"TLS-{generate_uid()[-8:]}"
    prior = _exam(patient, "20240101")
    service = Service(settings)
    service.scp.start()
    try:
        source = settings.priors.destination()
        assert source is not None and source.tls
        assert service.scp.tls_port is not None
        _put_modality(pacs, settings.node.ae_title, service.scp.tls_port, tls=True)
        tls = settings.send.client_tls()
        assert send(prior, source, calling_ae="CORDT1", tls=tls).n_stored == 3
        with pytest.raises(SendError):  # the PACS speaks TLS only
            send(prior, Destination.parse(pacs.destination), calling_ae="CORDT1", timeout_s=5)
        fetched = fetch_prior(
            settings,
            patient_id=patient,
            issuer_of_patient_id="HOSP",
            current_study_uid=generate_uid(),
            moment=("20240601", "100000"),
        )
        assert fetched is not None and fetched.study_uid == prior[0].StudyInstanceUID
        assert fetched.instances == 3
        assert service.batcher.flush()
        arrived = {i["sop_instance_uid"] for i in service.store.instance_infos()}
        assert arrived == {ds.SOPInstanceUID for ds in prior}
        # Orthanc's C-STORE sub-operations came in on our TLS port, with its certificate
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [e["message"] for e in service.store.iter_events("association")]
            if any("ORTHANC@127.0.0.1 accepted" in line for line in lines):
                break
            time.sleep(0.1)
        (moved,) = [line for line in lines if "ORTHANC@127.0.0.1 accepted" in line]
        assert "3 instance(s) stored" in moved and "TLS (TLSv1." in moved, moved
        assert "CN=cordt1-server" in moved, moved
    finally:
        service.scp.stop()
        service.batcher.close()
        pacs.stop()


def test_a_move_to_an_unknown_destination_fails_with_a_reason(orthanc: OrthancPacs) -> None:
    exam = _exam(f"MOVE-{generate_uid()[-8:]}", "20240101", n=1)
    pacs = Destination.parse(orthanc.destination)
    send(exam, pacs, calling_ae="CORDT1")
    _put_modality(orthanc, "CORDT1", free_port())  # known to Orthanc, but nobody listens
    with pytest.raises(QueryError, match="C-MOVE of study"):
        move_study(
            pacs,
            calling_ae="CORDT1",
            destination_ae="CORDT1",
            study_uid=exam[0].StudyInstanceUID,
            timeout_s=30,
        )


def _service_with_priors(
    tmp_path: Path, source: str, wait_s: float = 3600
) -> tuple[Service, list[int]]:
    settings = load_settings(
        data_dir=tmp_path / "data",
        node={
            "host": "127.0.0.1",
            "port": 0,
            "min_free_mb": 0,
            "record_flush_ms": 10,
            "settle_s": 0.1,
            "stale_s": 0.2,
        },
        priors={"source": source, "max_age_days": 400, "timeout_s": 30, "wait_s": wait_s},
    )
    service = Service(settings)
    queued: list[int] = []
    service.celery.send_task = lambda _name, args: queued.append(args[0])  # type: ignore[method-assign]
    service.scp.start()
    return service, queued


def _later() -> float:
    return time.time() + 10


def test_a_new_exam_waits_for_its_prior_to_be_fetched_and_processed(
    orthanc: OrthancPacs, tmp_path: Path
) -> None:
    from service.jobs.store import JobState

    patient = f"HOLD-{generate_uid()[-8:]}"
    prior, current = _exam(patient, "20240101"), _exam(patient, "20240601")
    assert send(prior, Destination.parse(orthanc.destination), calling_ae="X").n_stored == 3
    service, queued = _service_with_priors(tmp_path, orthanc.destination)
    try:
        assert service.scp.port is not None
        _put_modality(orthanc, service.settings.node.ae_title, service.scp.port)
        ours = Destination(service.settings.node.ae_title, "127.0.0.1", service.scp.port)
        send(current, ours, calling_ae="SCANNER")
        assert service.dispatch_ready(_later()) == []  # held: its prior is being fetched
        held = service._held[current[0].StudyInstanceUID]
        assert held.done.wait(30) and held.prior_uid == prior[0].StudyInstanceUID
        (prior_job,) = service.dispatch_ready(_later())  # the prior arrived: its job first
        assert service.store.get_job(prior_job).study_uid == prior[0].StudyInstanceUID
        assert service.dispatch_ready(_later()) == []  # still waiting for the prior's job
        service.store.set_state(prior_job, JobState.DONE, result={})
        (current_job,) = service.dispatch_ready(_later())
        assert service.store.get_job(current_job).study_uid == current[0].StudyInstanceUID
        assert queued == [prior_job, current_job]
        (fetched,) = [e["message"] for e in service.store.iter_events("prior.fetched")]
        assert prior[0].StudyInstanceUID in fetched and patient not in fetched
    finally:
        service.scp.stop()
        service.batcher.close()


def test_a_patient_without_an_earlier_exam_is_released_and_audited_as_no_prior(
    orthanc: OrthancPacs, tmp_path: Path
) -> None:
    patient = f"FIRST-{generate_uid()[-8:]}"
    later = _exam(patient, "20250101")  # on the PACS, but taken after the current exam
    assert send(later, Destination.parse(orthanc.destination), calling_ae="X").n_stored == 3
    service, queued = _service_with_priors(tmp_path, orthanc.destination)
    try:
        assert service.scp.port is not None
        ours = Destination(service.settings.node.ae_title, "127.0.0.1", service.scp.port)
        current = _exam(patient, "20240601")
        send(current, ours, calling_ae="SCANNER")
        assert service.dispatch_ready(_later()) == []  # held while the PACS is asked
        assert service._held[current[0].StudyInstanceUID].done.wait(30)
        (job,) = service.dispatch_ready(_later())
        assert queued == [job]
        assert service.store.get_job(job).study_uid == current[0].StudyInstanceUID
        (none,) = [e["message"] for e in service.store.iter_events("prior.none")]
        assert current[0].StudyInstanceUID in none and "no prior on the PACS" in none
        assert list(service.store.iter_events("prior.fetched")) == []
        assert patient not in none
    finally:
        service.scp.stop()
        service.batcher.close()


def test_an_exam_whose_prior_is_not_processed_in_time_goes_on_without_it(
    orthanc: OrthancPacs, tmp_path: Path
) -> None:
    patient = f"LATE-{generate_uid()[-8:]}"
    prior, current = _exam(patient, "20240101"), _exam(patient, "20240601")
    assert send(prior, Destination.parse(orthanc.destination), calling_ae="X").n_stored == 3
    service, queued = _service_with_priors(tmp_path, orthanc.destination, wait_s=60)
    try:
        assert service.scp.port is not None
        _put_modality(orthanc, service.settings.node.ae_title, service.scp.port)
        ours = Destination(service.settings.node.ae_title, "127.0.0.1", service.scp.port)
        send(current, ours, calling_ae="SCANNER")
        assert service.dispatch_ready(_later()) == []
        assert service._held[current[0].StudyInstanceUID].done.wait(30)
        (prior_job,) = service.dispatch_ready(_later())  # the prior's job, never finished
        assert service.dispatch_ready(_later()) == []  # within wait_s: still held
        (current_job,) = service.dispatch_ready(time.time() + 70)  # past wait_s
        assert service.store.get_job(current_job).study_uid == current[0].StudyInstanceUID
        assert queued == [prior_job, current_job]
        (late,) = [e["message"] for e in service.store.iter_events("prior.late")]
        assert current[0].StudyInstanceUID in late and "without its prior after 60 s" in late
    finally:
        service.scp.stop()
        service.batcher.close()


def test_an_unreachable_pacs_delays_nothing_but_is_audited(tmp_path: Path) -> None:
    service, queued = _service_with_priors(tmp_path, f"PACS@127.0.0.1:{free_port()}")
    try:
        assert service.scp.port is not None
        ours = Destination(service.settings.node.ae_title, "127.0.0.1", service.scp.port)
        exam = _exam("NOPACS", "20240601")
        send(exam, ours, calling_ae="SCANNER")
        assert service.dispatch_ready(_later()) == []
        assert service._held[exam[0].StudyInstanceUID].done.wait(30)
        (job,) = service.dispatch_ready(_later())
        assert queued == [job]
        (failed,) = [e["message"] for e in service.store.iter_events("prior.failed")]
        assert "connection refused" in failed
    finally:
        service.scp.stop()
        service.batcher.close()
