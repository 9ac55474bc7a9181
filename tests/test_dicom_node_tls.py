"""DICOM TLS between our SCU and our SCP over real sockets, and the TLS settings' errors."""

from __future__ import annotations

import os
import queue
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey
from dicom_node.scp import AssociationRecord, ScpConfig, StorageSCP
from dicom_node.scu import Destination, SendError, echo, send
from dicom_node.spool import Spool
from dicom_node.tls import ClientTls, ServerTls
from service.jobs.store import JobStore
from service.server import record_association
from tests.test_dicom_node_factories import make_mr
from tests.tls_factory import OPENSSL, Pki, make_pki

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")

OUR_AE = "CORDT1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class TlsNode:
    scp: StorageSCP
    spool: Spool
    instances: queue.Queue[InstanceInfo]
    records: queue.Queue[AssociationRecord]

    def destination(self, *, tls: bool = True, host: str = "127.0.0.1") -> Destination:
        port = self.scp.tls_port if tls else self.scp.port
        assert port is not None
        return Destination(OUR_AE, host, port, tls=tls)

    def record(self) -> AssociationRecord:
        return self.records.get(timeout=10)


@pytest.fixture
def start_tls_node(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., TlsNode]]:
    started: list[StorageSCP] = []

    def _start(
        require_client_certificate: bool = True,
        on_association: Callable[[AssociationRecord], None] | None = None,
        **config: Any,
    ) -> TlsNode:
        instances: queue.Queue[InstanceInfo] = queue.Queue()
        records: queue.Queue[AssociationRecord] = queue.Queue()

        def _record(record: AssociationRecord) -> None:
            if on_association is not None:
                on_association(record)
            records.put(record)

        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "tls_port": 0,
            "min_free_bytes": 0,
            "tls": ServerTls(
                pki.server_cert,
                pki.server_key,
                pki.ca_cert,
                require_client_certificate=require_client_certificate,
            ),
        }
        settings.update(config)
        spool = Spool(tmp_path / "spool")
        scp = StorageSCP(
            ScpConfig(OUR_AE, **settings),
            spool,
            instances.put,
            _record,
            own_markers=OwnResultMarkers(manufacturer="cordt1"),
            pseudonyms=PseudonymKey(b"test-site-secret-0123"),
        )
        scp.start()
        started.append(scp)
        return TlsNode(scp, spool, instances, records)

    yield _start
    for scp in started:
        scp.stop()


def client(pki: Pki, *, cert: str = "client", **kwargs: Any) -> ClientTls:
    chains = {
        "client": (pki.client_cert, pki.client_key),
        "rogue": (pki.rogue_client_cert, pki.rogue_client_key),
        "none": (None, None),
    }
    certificate, key = chains[cert]
    kwargs.setdefault("ca_certificates", pki.ca_cert)
    return ClientTls(certificate=certificate, private_key=key, **kwargs)


# ---------------------------------------------------------------------------- on the wire
def test_instances_sent_over_tls_arrive_byte_correct_and_the_peer_is_audited(
    start_tls_node: Callable[..., TlsNode], pki: Pki, tmp_path: Path
) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        node = start_tls_node(on_association=lambda record: record_association(store, record))
        study = generate_uid()
        datasets = [make_mr(study_uid=study, instance_number=k) for k in (1, 2, 3)]
        report = send(datasets, node.destination(), calling_ae="SCANNER", tls=client(pki))
        assert report.n_stored == 3
        infos = {i.sop_instance_uid: i for i in (node.instances.get(timeout=10) for _ in datasets)}
        for ds in datasets:
            stored = dcmread(infos[ds.SOPInstanceUID].path)
            assert stored == ds and stored.PixelData == ds.PixelData
        record = node.record()
        assert record.accepted and record.instances == 3
        assert record.tls.startswith("TLSv1.") and "CN=scanner" in record.tls
        lines = [e["message"] for e in store.events() if e["kind"] == "association"]
        assert any("SCANNER@127.0.0.1 accepted" in line and "CN=scanner" in line for line in lines)
    finally:
        store.close()


def test_plain_port_still_works_beside_the_tls_port(
    start_tls_node: Callable[..., TlsNode],
) -> None:
    node = start_tls_node()
    assert echo(node.destination(tls=False), "SCANNER")
    assert node.record().tls == ""


@pytest.mark.parametrize("processes", [1, 2], ids=["one_process", "acceptor_processes"])
def test_the_per_ae_cap_counts_tls_and_plain_associations_together(
    start_tls_node: Callable[..., TlsNode], pki: Pki, processes: int
) -> None:
    """A scanner holding its one allowed association over TLS gets no second on either port."""
    node = start_tls_node(max_associations_per_ae=1, acceptor_processes=processes)
    scanner = AE(ae_title="SCANNER")
    scanner.add_requested_context(Verification)
    tls_args = (client(pki).context(), "127.0.0.1")
    held = scanner.associate(
        "127.0.0.1", node.scp.tls_port or 0, ae_title=OUR_AE, tls_args=tls_args
    )
    assert held.is_established
    cap = "too many associations from this calling AE (max_associations_per_ae 1)"
    try:
        assert not echo(node.destination(tls=False), "SCANNER")
        assert not echo(node.destination(), "SCANNER", tls=client(pki))
        assert echo(node.destination(tls=False), "OTHER")  # another AE is not capped
        reasons = sorted(node.record().reason for _ in range(3))
        assert reasons == ["released", cap, cap]
    finally:
        held.release()
    assert node.record().reason == "released"  # the held one
    assert echo(node.destination(), "SCANNER", tls=client(pki))  # a free slot again


def test_tls_only_node_has_no_plain_port(start_tls_node: Callable[..., TlsNode], pki: Pki) -> None:
    node = start_tls_node(port=None)
    assert node.scp.port is None and node.scp.tls_port
    assert echo(node.destination(), "SCANNER", tls=client(pki))


def test_plain_dicom_on_the_tls_port_is_refused_and_audited(
    start_tls_node: Callable[..., TlsNode],
) -> None:
    node = start_tls_node()
    plain = Destination(OUR_AE, "127.0.0.1", node.scp.tls_port or 0)
    started = time.monotonic()
    with pytest.raises(SendError, match=r"aborted|closed|no TCP"):
        send([make_mr()], plain, calling_ae="SCANNER", timeout_s=5)
    assert time.monotonic() - started < 3
    record = node.record()
    assert not record.accepted
    assert "does not speak TLS" in record.reason
    assert list(node.spool.iter_files()) == []


@pytest.mark.parametrize(
    ("cert", "reason"),
    [("none", "sent no certificate"), ("rogue", "certificate not trusted")],
)
def test_client_without_a_trusted_certificate_is_refused_when_required(
    start_tls_node: Callable[..., TlsNode], pki: Pki, cert: str, reason: str
) -> None:
    node = start_tls_node(require_client_certificate=True)
    with pytest.raises(SendError):
        send([make_mr()], node.destination(), calling_ae="SCANNER", tls=client(pki, cert=cert))
    record = node.record()
    assert not record.accepted and reason in record.reason
    assert list(node.spool.iter_files()) == []


def test_client_without_certificate_is_accepted_when_not_required_but_rogue_is_not(
    start_tls_node: Callable[..., TlsNode], pki: Pki
) -> None:
    node = start_tls_node(require_client_certificate=False)
    assert echo(node.destination(), "SCANNER", tls=client(pki, cert="none"))
    assert node.record().tls.endswith("no peer certificate")
    assert not echo(node.destination(), "SCANNER", tls=client(pki, cert="rogue"))
    assert "certificate not trusted" in node.record().reason


def test_our_scu_refuses_a_server_it_does_not_trust(
    start_tls_node: Callable[..., TlsNode], pki: Pki
) -> None:
    node = start_tls_node()
    wrong_ca = client(pki, ca_certificates=pki.rogue_ca_cert)
    with pytest.raises(SendError, match=r"certificate not trusted: self.signed"):
        send([make_mr()], node.destination(), calling_ae="SCANNER", tls=wrong_ca)


def test_our_scu_checks_the_host_name_in_the_server_certificate(
    start_tls_node: Callable[..., TlsNode], pki: Pki
) -> None:
    node = start_tls_node(host="0.0.0.0")
    assert echo(node.destination(host="localhost"), "SCANNER", tls=client(pki))
    other_name = node.destination(host="127.0.0.2")  # same server, name not in its certificate
    with pytest.raises(SendError, match="IP address mismatch"):
        send([make_mr()], other_name, calling_ae="SCANNER", tls=client(pki))
    relaxed = client(pki, check_hostname=False)
    assert echo(other_name, "SCANNER", tls=relaxed)


def test_a_tls_1_2_client_is_served(start_tls_node: Callable[..., TlsNode], pki: Pki) -> None:
    node = start_tls_node()
    context = client(pki).context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1", node.scp.tls_port or 0, ae_title=OUR_AE, tls_args=(context, "127.0.0.1")
    )
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert node.record().tls.startswith("TLSv1.2, peer certificate CN=scanner")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused(start_tls_node: Callable[..., TlsNode], pki: Pki) -> None:
    node = start_tls_node(require_client_certificate=False)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    try:
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    with (
        socket.create_connection(("127.0.0.1", node.scp.tls_port or 0), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        old.wrap_socket(raw, server_hostname="localhost")
    record = node.record()
    assert not record.accepted and "TLS handshake failed" in record.reason


def test_the_null_profile_without_encryption_is_refused(
    start_tls_node: Callable[..., TlsNode], pki: Pki
) -> None:
    """The retired null profile (TLS without encryption) finds no common cipher suite."""
    node = start_tls_node(require_client_certificate=False)
    null = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    null.load_verify_locations(pki.ca_cert)
    null.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 has no null suites
    try:
        null.set_ciphers("eNULL:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot offer a null cipher suite")
    assert all(
        "NULL" in suite["name"] for suite in null.get_ciphers() if "TLS_" not in suite["name"]
    )
    with (
        socket.create_connection(("127.0.0.1", node.scp.tls_port or 0), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        null.wrap_socket(raw, server_hostname="localhost")
    record = node.record()
    assert not record.accepted
    assert record.reason == "TLS handshake failed: no common cipher suite"


def test_failed_handshakes_and_a_silent_client_do_not_lock_out_a_good_client(
    start_tls_node: Callable[..., TlsNode], pki: Pki
) -> None:
    node = start_tls_node(max_associations=2, acse_timeout_s=5)
    plain = Destination(OUR_AE, "127.0.0.1", node.scp.tls_port or 0)
    for _ in range(5):
        assert not echo(plain, "SCANNER", timeout_s=5)
    with socket.create_connection(("127.0.0.1", node.scp.tls_port or 0)):  # says nothing
        started = time.monotonic()
        assert echo(node.destination(), "SCANNER", tls=client(pki))
        assert time.monotonic() - started < 3


def test_tls_destination_without_tls_settings_is_a_clear_error() -> None:
    destination = Destination.parse("tls://PACS@127.0.0.1:2762")
    with pytest.raises(ValueError, match="over TLS but no TLS settings"):
        send([make_mr()], destination, calling_ae="CORDT1")


def test_tls_destination_parses_and_prints_with_its_prefix() -> None:
    destination = Destination.parse(" tls://PACS@[::1]:2762 ")
    assert destination == Destination("PACS", "::1", 2762, tls=True)
    assert str(destination) == "tls://PACS@[::1]:2762"
    assert Destination.parse("PACS@pacs:104").tls is False


# ---------------------------------------------------------------------------- settings errors
def test_scp_config_tls_port_needs_tls_and_some_port_is_needed(pki: Pki) -> None:
    with pytest.raises(ValueError, match="tls_port needs"):
        ScpConfig(OUR_AE, tls_port=2762)
    with pytest.raises(ValueError, match="needs a port"):
        ScpConfig(OUR_AE, port=None)
    tls = ServerTls(pki.server_cert, pki.server_key)
    with pytest.raises(ValueError, match="must differ"):
        ScpConfig(OUR_AE, port=2762, tls_port=2762, tls=tls)


def test_missing_and_invalid_files_are_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=r"node\.tls\.certificate: file not found: .*nope\.pem"):
        ServerTls(missing, pki.server_key, setting="node.tls")
    with pytest.raises(ValueError, match=r"node\.tls\.private_key: not a file"):
        ServerTls(pki.server_cert, tmp_path, setting="node.tls")
    with pytest.raises(ValueError, match="does not belong to the certificate"):
        ServerTls(pki.server_cert, pki.client_key)
    with pytest.raises(ValueError, match="not a PEM certificate"):
        ServerTls(pki.server_key, pki.server_key)
    with pytest.raises(ValueError, match=r"ca_certificates: .* no usable PEM CA"):
        ServerTls(pki.server_cert, pki.server_key, ca_certificates=pki.server_key)
    with pytest.raises(ValueError, match=r"needs tls\.ca_certificates"):
        ServerTls(pki.server_cert, pki.server_key, require_client_certificate=True)
    with pytest.raises(ValueError, match=r"send\.tls\.ca_certificates: file not found"):
        ClientTls(ca_certificates=missing, setting="send.tls")
    with pytest.raises(ValueError, match="give both or neither"):
        ClientTls(ca_certificates=pki.ca_cert, certificate=pki.client_cert)


def test_encrypted_key_is_refused_without_a_password_prompt(pki: Pki, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    assert OPENSSL is not None
    subprocess.run(
        [
            *(OPENSSL, "pkey", "-in", str(pki.server_key), "-aes256"),
            *("-passout", "pass:secret", "-out", str(encrypted)),
        ],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    with pytest.raises(ValueError, match="is encrypted"):
        ServerTls(pki.server_cert, encrypted, setting="node.tls")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_key_is_named(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "locked.key"
    key.write_bytes(pki.server_key.read_bytes())
    key.chmod(0)
    with pytest.raises(ValueError, match=r"cannot read .*Permission denied"):
        ServerTls(pki.server_cert, key, setting="node.tls")


def test_a_client_silent_during_the_handshake_is_dropped_after_the_acse_timeout(
    start_tls_node: Callable[..., TlsNode],
) -> None:
    node = start_tls_node(acse_timeout_s=1)
    with socket.create_connection(("127.0.0.1", node.scp.tls_port or 0), timeout=10) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b""  # the server closed the connection
        waited = time.monotonic() - started
    assert 0.8 < waited < 4
    record = node.record()
    assert not record.accepted and "not completed within 1 s" in record.reason
