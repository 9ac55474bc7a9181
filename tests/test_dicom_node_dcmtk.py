"""Real peers: DCMTK storescu sends to our SCP, our SCU sends to DCMTK storescp (slow)."""

from __future__ import annotations

import os
import queue
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey
from dicom_node.scp import ScpConfig, StorageSCP
from dicom_node.scu import Destination, echo, send
from dicom_node.spool import Spool
from tests.test_dicom_node_factories import free_port, make_mr

# pynetdicom installs Python apps named storescu/storescp that can shadow DCMTK on PATH:
# use the Debian DCMTK binaries explicitly.
DCMTK_BIN = Path("/usr/bin")
STORESCU = str(DCMTK_BIN / "storescu")
STORESCP = str(DCMTK_BIN / "storescp")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(STORESCU).is_file() and Path(STORESCP).is_file()),
        reason="DCMTK storescu/storescp not installed in /usr/bin",
    ),
]

PROFILE = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[J2KLossless]
TransferSyntax1 = JPEG2000LosslessOnly
[RLE]
TransferSyntax1 = RLELossless
[[PresentationContexts]]
[MR]
PresentationContext1 = MRImageStorage\\Uncompressed
PresentationContext2 = MRImageStorage\\J2KLossless
PresentationContext3 = MRImageStorage\\RLE
[[Profiles]]
[MR]
PresentationContexts = MR
"""


def _dataset_bytes(path: Path) -> bytes:
    """Return the encoded dataset after the file meta (what travelled over the wire)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    return data[144 + group_length :]


def _write_exam(folder: Path, study_uid: str) -> list[Path]:
    folder.mkdir()
    paths: list[Path] = []
    for component in ("INV1", "INV2", "UNI"):
        series_uid = generate_uid()
        for number in (1, 2):
            ds = make_mr(
                study_uid=study_uid,
                series_uid=series_uid,
                component=component,
                instance_number=number,
                images_in_acquisition=2,
                rows=64,
                cols=64,
            )
            if component == "INV1" and number == 1:
                ds.compress(JPEG2000Lossless)
            if component == "INV2" and number == 2:
                ds.compress(RLELossless, encoding_plugin="pydicom")
            path = folder / f"{component}_{number}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


@pytest.mark.parametrize("direct_pdata", [True, False], ids=["direct_pdata", "pynetdicom_pdata"])
def test_dcmtk_storescu_directory_arrives_byte_correct(tmp_path: Path, direct_pdata: bool) -> None:
    study_uid = generate_uid()
    sources = _write_exam(tmp_path / "exam", study_uid)
    profile = tmp_path / "profile.cfg"
    profile.write_text(PROFILE)
    received: queue.Queue[InstanceInfo] = queue.Queue()
    spool = Spool(tmp_path / "spool")
    config = ScpConfig(
        "CORDT1",
        host="127.0.0.1",
        port=0,
        allowed_calling_aes={"SCANNER": "127.0.0.1"},
        direct_pdata=direct_pdata,
    )
    with StorageSCP(
        config,
        spool,
        received.put,
        own_markers=OwnResultMarkers(manufacturer="cordt1"),
        pseudonyms=PseudonymKey(b"test-site-secret-0123"),
    ) as scp:
        result = subprocess.run(
            [
                *(STORESCU, "-aet", "SCANNER", "-aec", "CORDT1", "-xf", str(profile), "MR"),
                *("+sd", "+r", "+sp", "*.dcm", "127.0.0.1", str(scp.port), str(tmp_path / "exam")),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        infos = [received.get(timeout=10) for _ in sources]
    by_sop = {info.sop_instance_uid: info for info in infos}
    syntaxes = set()
    for source in sources:
        original = dcmread(source)
        info = by_sop[original.SOPInstanceUID]
        assert info.study_uid == study_uid and info.calling_ae == "SCANNER"
        assert info.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
        assert _dataset_bytes(info.path) == _dataset_bytes(source)
        syntaxes.add(info.transfer_syntax_uid)
    assert {JPEG2000Lossless, RLELossless} <= syntaxes
    assert len(list(spool.iter_files())) == len(sources)


def test_our_send_stores_files_in_dcmtk_storescp(tmp_path: Path) -> None:
    sources = _write_exam(tmp_path / "exam", generate_uid())
    out = tmp_path / "pacs"
    out.mkdir()
    port = free_port()
    peer = subprocess.Popen(
        [STORESCP, "+xa", "-aet", "PACS", "-od", str(out), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        destination = Destination("PACS", "127.0.0.1", port)
        deadline = time.monotonic() + 15
        while not echo(destination, "CORDT1", timeout_s=2):
            assert peer.poll() is None, "storescp exited early"
            assert time.monotonic() < deadline, "storescp did not answer C-ECHO within 15 s"
            time.sleep(0.05)
        report = send(sources, destination, calling_ae="CORDT1", timeout_s=30)
        assert report.n_stored == len(sources) and not report.failed
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    stored = {dcmread(path).SOPInstanceUID: path for path in out.iterdir()}
    assert len(stored) == len(sources)
    for source in sources:
        original = dcmread(source)
        copy = dcmread(stored[original.SOPInstanceUID])
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert copy.PixelData == original.PixelData
