"""TLS from the settings file to the running service: receiving, sending, start-up errors."""

from __future__ import annotations

import queue
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey
from dicom_node.scp import ScpConfig, StorageSCP
from dicom_node.scu import Destination, echo
from dicom_node.spool import Spool
from dicom_node.tls import ClientTls, ServerTls
from service.cli import cli
from service.jobs.store import JobState, JobStore
from service.jobs.tasks import JobRunner, SendOutcome
from service.phantom.pacs import free_port, wait_for_port
from service.server import Service
from service.settings import CONFIG_ENV, Settings, load_settings
from tests.service_harness import ServiceProcess, finished, make_exams, storescu
from tests.test_dicom_node_factories import make_mr
from tests.tls_factory import OPENSSL, Pki, make_pki

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_settings(config) exports $CORDT1_CONFIG: setenv first so that the variable is
    # removed again after the test (a TLS-only config must not leak into later tests).
    monkeypatch.setenv(CONFIG_ENV, "")
    monkeypatch.delenv(CONFIG_ENV)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _toml(tmp_path: Path, pki: Pki, *, certificate: Path | None = None, extra: str = "") -> Path:
    config = tmp_path / "cordt1.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nworkers = 0\n'
        '[node]\nhost = "127.0.0.1"\nport = 0\nlisten_plain = false\n'
        "[node.tls]\nport = 0\n"
        f'certificate = "{certificate or pki.server_cert}"\n'
        f'private_key = "{pki.server_key}"\n'
        f'ca_certificates = "{pki.ca_cert}"\n'
        "require_client_certificate = true\n"
        '[send]\ndestinations = ["tls://PACS@127.0.0.1:2762"]\n'
        "[send.tls]\n"
        f'ca_certificates = "{pki.ca_cert}"\n'
        f'certificate = "{pki.client_cert}"\n'
        f'private_key = "{pki.client_key}"\n' + extra
    )
    return config


def test_tls_settings_load_from_the_file_and_environment(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORDT1_NODE__TLS__PORT", "3762")
    settings = load_settings(_toml(tmp_path, pki))
    assert settings.node.tls is not None and settings.node.tls.port == 3762
    assert settings.node.listen_plain is False
    server = settings.node.tls.server_tls()
    assert server.require_client_certificate and server.ca_certificates == pki.ca_cert
    client = settings.send.client_tls()
    assert client is not None and client.certificate == pki.client_cert and client.check_hostname


def test_tls_destination_without_send_tls_is_refused_when_loading(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"TLS destination .* no \[send.tls\] section"):
        Settings(data_dir=tmp_path, send={"destinations": ["tls://PACS@10.0.0.1:2762"]})


def test_tls_only_without_a_tls_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"listen_plain = false needs a \[node.tls\]"):
        Settings(data_dir=tmp_path, node={"listen_plain": False})


def test_serve_with_a_missing_certificate_stops_at_once_naming_it(
    tmp_path: Path, pki: Pki
) -> None:
    config = _toml(tmp_path, pki, certificate=tmp_path / "gone.pem")
    result = CliRunner().invoke(cli, ["--config", str(config), "serve"])
    assert result.exit_code == 1
    assert "cannot start: node.tls.certificate: file not found" in result.output
    assert "gone.pem" in result.output
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_serve_with_a_missing_sending_key_stops_at_once(tmp_path: Path, pki: Pki) -> None:
    config = _toml(tmp_path, pki)
    config.write_text(config.read_text().replace(str(pki.client_key), str(tmp_path / "k.pem")))
    result = CliRunner().invoke(cli, ["--config", str(config), "serve"])
    assert result.exit_code == 1
    assert "send.tls.private_key: file not found" in result.output


def test_service_listens_on_tls_only_and_audits_the_peer(tmp_path: Path, pki: Pki) -> None:
    service = Service(load_settings(_toml(tmp_path, pki)))
    service.start()
    try:
        assert service.scp.port is None and service.scp.tls_port
        destination = Destination("CORDT1", "127.0.0.1", service.scp.tls_port, tls=True)
        good = ClientTls(pki.ca_cert, pki.client_cert, pki.client_key)
        assert echo(destination, "SCANNER", tls=good)
        assert not echo(destination, "SCANNER", tls=ClientTls(pki.ca_cert))
    finally:
        service.stop()
    store = JobStore(service.settings.job_store_url)
    try:
        lines = [e["message"] for e in store.events() if e["kind"] == "association"]
    finally:
        store.close()
    assert any("SCANNER@127.0.0.1 accepted" in x and "TLS (TLSv1." in x for x in lines)
    assert any("rejected (TLS handshake failed: the peer sent no certificate" in x for x in lines)


@pytest.fixture
def tls_pacs(tmp_path: Path, pki: Pki) -> Iterator[tuple[StorageSCP, queue.Queue[InstanceInfo]]]:
    received: queue.Queue[InstanceInfo] = queue.Queue()
    scp = StorageSCP(
        ScpConfig(
            "PACS",
            host="127.0.0.1",
            port=None,
            tls_port=0,
            min_free_bytes=0,
            tls=ServerTls(pki.server_cert, pki.server_key, pki.ca_cert, True),
        ),
        Spool(tmp_path / "pacs"),
        received.put,
        own_markers=OwnResultMarkers(manufacturer="nobody"),
        pseudonyms=PseudonymKey(b"test-site-secret-0123"),
    )
    scp.start()
    yield scp, received
    scp.stop()


def _sending_job(store: JobStore, files: list[Path]) -> int:
    job_id = store.create_job(
        study_uid=generate_uid(), patient_key="p", series_uids=[], n_instances=1, complete=True
    )
    result = {"dicom": [str(p) for p in files], "sent": {}, "send_attempts": 0}
    store.set_state(job_id, JobState.SENDING, result=result)
    return job_id


@pytest.mark.parametrize("trusted", [True, False])
def test_results_go_to_a_tls_destination_or_the_job_says_why_not(
    tmp_path: Path,
    pki: Pki,
    tls_pacs: tuple[StorageSCP, queue.Queue[InstanceInfo]],
    trusted: bool,
) -> None:
    scp, received = tls_pacs
    result_file = tmp_path / "result.dcm"
    ds = make_mr()
    ds.save_as(result_file, enforce_file_format=True)
    settings = Settings(
        data_dir=tmp_path / "data",
        send={
            "destinations": [f"tls://PACS@127.0.0.1:{scp.tls_port}"],
            "attempts": 3,
            "tls": {
                "ca_certificates": pki.ca_cert if trusted else pki.rogue_ca_cert,
                "certificate": pki.client_cert,
                "private_key": pki.client_key,
            },
        },
    )
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        job_id = _sending_job(store, [result_file])
        outcome = JobRunner(settings, store).send(job_id)
        job = store.get_job(job_id)
    finally:
        store.close()
    if trusted:
        assert outcome is SendOutcome.SENT and job.state is JobState.DONE
        assert received.get(timeout=10).sop_instance_uid == ds.SOPInstanceUID
    else:
        assert outcome is SendOutcome.RETRY and job.state is JobState.SENDING
        assert "TLS handshake failed: certificate not trusted" in job.error
        assert received.empty()


@pytest.mark.slow
def test_scanner_to_pacs_over_tls_end_to_end(tmp_path: Path, pki: Pki) -> None:
    """DCMTK storescu +tls -> `cordt1 serve` (TLS port) -> DCMTK storescp +tls."""
    storescp = Path("/usr/bin/storescp")
    if not storescp.is_file():
        pytest.skip("DCMTK storescp not installed in /usr/bin")
    exam = make_exams(tmp_path / "phantom", seed=23)[0]
    out = tmp_path / "pacs"
    out.mkdir()
    pacs_port, tls_port = free_port(), free_port()
    tls_files = ["-pw", "+cf", str(pki.ca_cert)]
    peer = subprocess.Popen(
        [
            *(str(storescp), "+tls", str(pki.server_key), str(pki.server_cert), *tls_files),
            *("-aet", "PACS", "-od", str(out), str(pacs_port)),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    extra_toml = (
        f"\n[node.tls]\nport = {tls_port}\n"
        f'certificate = "{pki.server_cert}"\nprivate_key = "{pki.server_key}"\n'
        f'ca_certificates = "{pki.ca_cert}"\nrequire_client_certificate = true\n'
        f'[send.tls]\nca_certificates = "{pki.ca_cert}"\n'
        f'certificate = "{pki.client_cert}"\nprivate_key = "{pki.client_key}"\n'
    )
    try:
        with ServiceProcess(
            tmp_path / "service",
            destination=f"tls://PACS@127.0.0.1:{pacs_port}",
            site_protocols=exam.site_protocols,
            extra_toml=extra_toml,
        ) as service:
            wait_for_port(tls_port, timeout_s=30)
            scanner_tls = ("+tls", str(pki.client_key), str(pki.client_cert), *tls_files)
            sent = storescu(tls_port, [exam.dicom_dir], extra=scanner_tls)
            assert sent.returncode == 0, sent.stderr
            jobs = service.wait_for_jobs(finished, timeout_s=300)
            assert [j.state for j in jobs] == [JobState.DONE], [j.error for j in jobs]
            events = service.store().events(limit=500)
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    expected = {slab["result_sop_instance_uid"] for slab in jobs[0].result["summary"]["slabs"]}
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out.iterdir()}
    assert expected and expected <= received
    lines = [e["message"] for e in events if e["kind"] == "association"]
    assert any("SCANNER@127.0.0.1 accepted" in x and "CN=scanner" in x for x in lines)
