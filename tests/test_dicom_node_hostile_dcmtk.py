"""Real peers against hostile input: DCMTK storescu/echoscu meet statuses, timeouts, limits."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey
from dicom_node.scp import AssociationRecord, ScpConfig, StorageSCP, StoreRefusal
from dicom_node.spool import Spool
from tests.hostile_factory import BROKEN, broken_mr, send_raw_c_store
from tests.test_dicom_node_factories import make_mr

DCMTK_BIN = Path("/usr/bin")  # not pynetdicom's Python apps of the same names
STORESCU = str(DCMTK_BIN / "storescu")
ECHOSCU = str(DCMTK_BIN / "echoscu")
DCMTK_STORE_FAILED = 194  # storescu's exit code when a C-STORE got a failure status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(STORESCU).is_file() and Path(ECHOSCU).is_file()),
        reason="DCMTK storescu/echoscu not installed in /usr/bin",
    ),
]


class _Node:
    def __init__(self, tmp_path: Path, **config: object) -> None:
        self.instances: queue.Queue[InstanceInfo] = queue.Queue()
        self.records: queue.Queue[AssociationRecord] = queue.Queue()
        self.refusals: list[StoreRefusal] = []
        self.spool = Spool(tmp_path / "spool")
        settings: dict[str, object] = {"host": "127.0.0.1", "port": 0, "min_free_bytes": 0}
        settings.update(config)
        self.scp = StorageSCP(
            ScpConfig("CORDT1", **settings),  # type: ignore[arg-type]
            self.spool,
            self.instances.put,
            self.records.put,
            own_markers=OwnResultMarkers(manufacturer="cordt1"),
            pseudonyms=PseudonymKey(b"test-site-secret-0123"),
            on_refusal=self.refusals.append,
        )

    def dcmtk(self, tool: str, *args: str, calling_ae: str = "SCANNER") -> tuple[int, str, float]:
        started = time.monotonic()
        result = subprocess.run(
            [
                tool,
                "-d",
                "-aet",
                calling_ae,
                "-aec",
                "CORDT1",
                "127.0.0.1",
                str(self.scp.port),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.returncode, result.stdout + result.stderr, time.monotonic() - started


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[type[_Node]]:
    started: list[_Node] = []

    def _make(**config: object) -> _Node:
        node = _Node(tmp_path, **config)
        node.scp.start()
        started.append(node)
        return node

    yield _make  # type: ignore[misc]
    for node in started:
        node.scp.stop()


def test_storescu_gets_c220_naming_each_problem_and_the_good_file_is_stored(
    node_factory: type[_Node], tmp_path: Path
) -> None:
    node = node_factory()
    folder = tmp_path / "files"
    folder.mkdir()
    names = ["half pixel data", "missing PixelData", "65535 x 65535", "BitsAllocated 0"]
    for index, name in enumerate(names):
        broken_mr(name).save_as(folder / f"{index}.dcm", enforce_file_format=True)
    good = make_mr()
    good.save_as(folder / "good.dcm", enforce_file_format=True)
    files = sorted(str(p) for p in folder.iterdir())
    _, output, _ = node.dcmtk(STORESCU, "--no-halt", *files)  # exit code 0 with --no-halt
    assert output.count("DIMSE Status                  : 0xc220") == len(names)
    for name in names:
        assert f"[{BROKEN[name][1]}" in output, f"no Error Comment naming {name!r}"
    assert output.count("DIMSE Status                  : 0x0000: Success") == 1
    (spooled,) = node.spool.iter_files()
    assert dcmread(spooled).SOPInstanceUID == good.SOPInstanceUID
    assert len(list(node.spool.quarantine_dir.glob("*.dcm"))) == len(names)
    assert sorted(r.status for r in node.refusals) == [0xC220] * len(names)
    code, output, _ = node.dcmtk(STORESCU, files[0])  # without --no-halt: storescu fails
    assert code == DCMTK_STORE_FAILED, output
    record = node.records.get(timeout=10)
    assert (record.instances, record.failures, record.reason) == (1, 4, "released")
    assert node.records.get(timeout=10).failures == 1


def test_ten_bad_clients_do_not_lock_out_dcmtk_and_are_dropped_when_idle(
    node_factory: type[_Node], tmp_path: Path
) -> None:
    node = node_factory(max_associations=10, max_associations_per_ae=2, network_timeout_s=3.0)
    established: list[Association] = []
    answers: list[float] = []

    def bad_client() -> None:
        ae = AE(ae_title="BROKEN")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="CORDT1")
        if assoc.is_established:
            established.append(assoc)
            response, seconds = send_raw_c_store(assoc, make_mr(), sop_instance_uid=None)
            if response is not None and response.Status == 0x0117:
                answers.append(seconds)
            # then hold the association without a word

    bad = [threading.Thread(target=bad_client) for _ in range(10)]
    for thread in bad:
        thread.start()
    for thread in bad:
        thread.join(timeout=20)
    assert len(established) == 2 and len(answers) == 2 and max(answers) < 2
    code, output, seconds = node.dcmtk(ECHOSCU)
    assert code == 0 and seconds < 3, output
    path = tmp_path / "good.dcm"
    make_mr().save_as(path, enforce_file_format=True)
    code, output, seconds = node.dcmtk(STORESCU, str(path))
    assert code == 0 and seconds < 3, output
    code, output, _ = node.dcmtk(ECHOSCU, calling_ae="BROKEN")
    assert code != 0 and "Association Rejected" in output
    assert "Rejected Transient" in output and "Local Limit Exceeded" in output, output
    deadline = time.monotonic() + 15
    while any(not a.is_aborted for a in established) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(a.is_aborted for a in established), "idle bad clients were not dropped"
    # 8 capped bad clients, echoscu + storescu from SCANNER, the capped BROKEN echoscu, 2 idle
    records = [node.records.get(timeout=10) for _ in range(13)]
    idle = [r for r in records if r.calling_ae == "BROKEN" and "idle for 3 s" in r.reason]
    capped = [r for r in records if "max_associations_per_ae" in r.reason]
    assert len(idle) == 2 and len(capped) == 9  # 8 bad clients + the BROKEN echoscu
    assert all(2.5 < r.ended_at - r.started_at < 8 for r in idle)
