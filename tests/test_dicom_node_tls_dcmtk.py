"""DICOM TLS with real DCMTK peers: storescu/echoscu +tls against our SCP, our SCU against
storescp +tls (slow). Certificates are made with openssl at test time."""

from __future__ import annotations

import os
import queue
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey
from dicom_node.scp import AssociationRecord, ScpConfig, StorageSCP
from dicom_node.scu import Destination, SendError, echo, send
from dicom_node.spool import Spool
from dicom_node.tls import ClientTls, ServerTls
from tests.test_dicom_node_factories import free_port, make_mr
from tests.tls_factory import OPENSSL, Pki, make_pki

DCMTK_BIN = Path("/usr/bin")  # pynetdicom's Python apps of the same names may shadow DCMTK
STORESCU, STORESCP, ECHOSCU = (str(DCMTK_BIN / n) for n in ("storescu", "storescp", "echoscu"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(Path(tool).is_file() for tool in (STORESCU, STORESCP, ECHOSCU)),
        reason="DCMTK storescu/storescp/echoscu not installed in /usr/bin",
    ),
    pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class _Node:
    def __init__(self, tmp_path: Path, pki: Pki, *, direct_pdata: bool = True) -> None:
        self.instances: queue.Queue[InstanceInfo] = queue.Queue()
        self.records: queue.Queue[AssociationRecord] = queue.Queue()
        self.spool = Spool(tmp_path / "spool")
        config = ScpConfig(
            "CORDT1",
            host="127.0.0.1",
            port=0,
            tls_port=0,
            min_free_bytes=0,
            allowed_calling_aes={"SCANNER": "127.0.0.1"},
            direct_pdata=direct_pdata,
            tls=ServerTls(
                pki.server_cert, pki.server_key, pki.ca_cert, require_client_certificate=True
            ),
        )
        self.scp = StorageSCP(
            config,
            self.spool,
            self.instances.put,
            self.records.put,
            own_markers=OwnResultMarkers(manufacturer="cordt1"),
            pseudonyms=PseudonymKey(b"test-site-secret-0123"),
        )

    def dcmtk(
        self, tool: str, *options: str, files: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run a DCMTK SCU against our TLS port."""
        assert self.scp.tls_port is not None
        return subprocess.run(
            [
                *(tool, "-aet", "SCANNER", "-aec", "CORDT1", "-to", "10", *options),
                *("127.0.0.1", str(self.scp.tls_port), *files),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def node(tmp_path: Path, pki: Pki, request: pytest.FixtureRequest) -> Iterator[_Node]:
    """A TLS node; ``indirect`` parametrization gives its ``direct_pdata`` (default on)."""
    started = _Node(tmp_path, pki, direct_pdata=getattr(request, "param", True))
    started.scp.start()
    yield started
    started.scp.stop()


def _tls_args(key: Path, cert: Path, ca: Path) -> list[str]:
    return ["+tls", str(key), str(cert), "-pw", "+cf", str(ca)]


def _exam_files(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    paths = []
    for k in range(1, n + 1):
        path = folder / f"uni_{k}.dcm"
        make_mr(study_uid=study, series_uid=series, instance_number=k).save_as(
            path, enforce_file_format=True
        )
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "node", [True, False], ids=["direct_pdata", "pynetdicom_pdata"], indirect=True
)
def test_dcmtk_storescu_over_tls_stores_and_is_audited_with_its_certificate(
    node: _Node, pki: Pki, tmp_path: Path
) -> None:
    files = _exam_files(tmp_path / "exam")
    args = _tls_args(pki.client_key, pki.client_cert, pki.ca_cert)
    result = node.dcmtk(STORESCU, *args, "+sd", files=(str(tmp_path / "exam"),))
    assert result.returncode == 0, result.stderr
    infos = {i.sop_instance_uid: i for i in (node.instances.get(timeout=10) for _ in files)}
    for path in files:
        sent = dcmread(path)
        assert dcmread(infos[sent.SOPInstanceUID].path) == sent
    record = node.records.get(timeout=10)
    assert record.accepted and record.calling_ae == "SCANNER" and record.instances == 3
    assert record.tls == "TLSv1.3, peer certificate CN=scanner"  # DCMTK's default profile
    echo_result = node.dcmtk(ECHOSCU, *args)
    assert echo_result.returncode == 0, echo_result.stderr


def test_dcmtk_retired_aes_profile_is_refused_for_want_of_a_common_cipher(
    node: _Node, pki: Pki
) -> None:
    # The retired AES profile offers only TLS_RSA_WITH_AES_128_CBC_SHA (no forward secrecy),
    # which BCP 195 and our TLS settings do not accept.
    args = _tls_args(pki.client_key, pki.client_cert, pki.ca_cert)
    result = node.dcmtk(ECHOSCU, *args, "+pa")
    assert result.returncode != 0
    record = node.records.get(timeout=10)
    assert not record.accepted and "no common cipher suite" in record.reason


def test_plain_dcmtk_client_is_refused_on_the_tls_port(node: _Node) -> None:
    started = time.monotonic()
    result = node.dcmtk(ECHOSCU)
    assert result.returncode != 0
    assert time.monotonic() - started < 5
    record = node.records.get(timeout=10)
    assert not record.accepted and "does not speak TLS" in record.reason


@pytest.mark.parametrize("client", ["rogue", "anonymous"])
def test_dcmtk_client_without_a_trusted_certificate_is_refused(
    node: _Node, pki: Pki, tmp_path: Path, client: str
) -> None:
    files = _exam_files(tmp_path / "exam", n=1)
    if client == "rogue":
        args = _tls_args(pki.rogue_client_key, pki.rogue_client_cert, pki.ca_cert)
        reason = "certificate not trusted"
    else:  # TLS without a client certificate
        args = ["+tla", "+cf", str(pki.ca_cert)]
        reason = "sent no certificate"
    result = node.dcmtk(STORESCU, *args, files=(str(files[0]),))
    assert result.returncode != 0
    record = node.records.get(timeout=10)
    assert not record.accepted and reason in record.reason
    assert list(node.spool.iter_files()) == []


def test_dcmtk_refuses_us_when_it_does_not_trust_our_certificate(node: _Node, pki: Pki) -> None:
    args = _tls_args(pki.client_key, pki.client_cert, pki.rogue_ca_cert)
    result = node.dcmtk(ECHOSCU, *args)
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr + result.stdout
    record = node.records.get(timeout=10)
    assert "does not trust our certificate" in record.reason


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[tuple[Destination, Path]]:
    out = tmp_path / "pacs"
    out.mkdir()
    port = free_port()
    # storescp +tls requires and verifies a client certificate by default (-rc).
    peer = subprocess.Popen(
        [
            *(STORESCP, *_tls_args(pki.server_key, pki.server_cert, pki.ca_cert)),
            *("-aet", "PACS", "-od", str(out), str(port)),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    destination = Destination("PACS", "127.0.0.1", port, tls=True)
    try:
        deadline = time.monotonic() + 15
        good = ClientTls(pki.ca_cert, pki.client_cert, pki.client_key)
        while not echo(destination, "CORDT1", timeout_s=2, tls=good):
            assert peer.poll() is None, peer.communicate()[0]
            assert time.monotonic() < deadline, "storescp +tls did not start"
            time.sleep(0.2)
        yield destination, out
    finally:
        peer.terminate()
        peer.wait(timeout=10)


def test_our_send_stores_files_in_dcmtk_storescp_over_tls(
    tls_storescp: tuple[Destination, Path], pki: Pki, tmp_path: Path
) -> None:
    destination, out = tls_storescp
    files = _exam_files(tmp_path / "results")
    tls = ClientTls(pki.ca_cert, pki.client_cert, pki.client_key)
    report = send(files, destination, calling_ae="CORDT1", tls=tls)
    assert report.n_stored == 3
    deadline = time.monotonic() + 10
    while len(list(out.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    received = {dcmread(p).SOPInstanceUID: dcmread(p) for p in out.iterdir()}
    for path in files:
        sent = dcmread(path)
        assert received[sent.SOPInstanceUID].PixelData == sent.PixelData


@pytest.mark.parametrize(
    ("client", "cause"),
    [
        ("no certificate", "the peer requires a client certificate"),
        ("rogue certificate", "the peer does not trust our certificate"),
        ("wrong CA", "certificate not trusted: self-signed certificate in certificate chain"),
    ],
)
def test_our_send_to_dcmtk_over_tls_fails_saying_why(
    tls_storescp: tuple[Destination, Path], pki: Pki, client: str, cause: str
) -> None:
    destination, out = tls_storescp
    tls = {
        "no certificate": ClientTls(pki.ca_cert),
        "rogue certificate": ClientTls(pki.ca_cert, pki.rogue_client_cert, pki.rogue_client_key),
        "wrong CA": ClientTls(pki.rogue_ca_cert, pki.client_cert, pki.client_key),
    }[client]
    with pytest.raises(SendError) as raised:
        send([make_mr()], destination, calling_ae="CORDT1", tls=tls, timeout_s=10)
    assert cause in raised.value.cause
    assert list(out.iterdir()) == []
