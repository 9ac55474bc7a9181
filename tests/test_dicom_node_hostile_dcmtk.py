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
from service.jobs.store import JobStore
from service.server import record_refusal
from tests.hostile_factory import BROKEN, broken_mr, send_raw_c_store
from tests.test_dicom_node_factories import make_mr

DCMTK_BIN = Path("/usr/bin")  # not pynetdicom's Python apps of the same names
STORESCU = str(DCMTK_BIN / "storescu")
ECHOSCU = str(DCMTK_BIN / "echoscu")
DCMTK_STORE_FAILED = 194  # storescu's exit code when a C-STORE got a failure status
DCMTK_STORE_REFUSED = 167  # storescu's (3.6.7) exit code when a C-STORE was refused (A7xx)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(STORESCU).is_file() and Path(ECHOSCU).is_file()),
        reason="DCMTK storescu/echoscu not installed in /usr/bin",
    ),
]


class _Node:
    """A storage SCP; ``audit``: refusals also go to the service's audit trail there."""

    def __init__(self, tmp_path: Path, audit: JobStore | None = None, **config: object) -> None:
        self.instances: queue.Queue[InstanceInfo] = queue.Queue()
        self.records: queue.Queue[AssociationRecord] = queue.Queue()
        self.refusals: list[StoreRefusal] = []
        self.audit = audit
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
            on_refusal=self._refused,
        )

    def _refused(self, refusal: StoreRefusal) -> None:
        self.refusals.append(refusal)
        if self.audit is not None:  # what Service.on_refusal does
            record_refusal(self.audit, refusal)

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


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[JobStore]:
    """The service's audit trail (job store) in a throw-away SQLite file."""
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    yield store
    store.close()


def test_storescu_gets_c220_naming_each_problem_and_the_good_file_is_stored(
    node_factory: type[_Node], tmp_path: Path, audit: JobStore
) -> None:
    node = node_factory(audit=audit)
    folder = tmp_path / "files"
    folder.mkdir()
    names = [
        "half pixel data",
        "missing PixelData",
        "65535 x 65535",
        "BitsAllocated 0",
        "Rows 0",
        "Columns 0",
        "SamplesPerPixel 0",
        "SamplesPerPixel 5",
    ]
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
    lines = [event["message"] for event in audit.iter_events("store.refused")]
    assert len(lines) == len(names)
    for name in names:  # one audit line per refusal, with status, reason and quarantine file
        (line,) = [line for line in lines if BROKEN[name][1] in line]
        assert line.startswith("SCANNER@127.0.0.1 SOP instance ")
        assert "0xC220 failure: cannot understand (pixel data do not match" in line
        assert "quarantined as " in line
    quarantined = {line.rsplit("quarantined as ", 1)[1] for line in lines}
    assert quarantined == {p.name for p in node.spool.quarantine_dir.glob("*.dcm")}
    assert "Doe" not in " ".join(lines)  # no patient name in the audit trail
    code, output, _ = node.dcmtk(STORESCU, files[0])  # without --no-halt: storescu fails
    assert code == DCMTK_STORE_FAILED, output
    record = node.records.get(timeout=10)
    assert (record.instances, record.failures, record.reason) == (1, len(names), "released")
    assert node.records.get(timeout=10).failures == 1


def test_storescu_gets_a700_when_the_spool_disk_is_short_and_nothing_is_written(
    node_factory: type[_Node], tmp_path: Path, audit: JobStore
) -> None:
    node = node_factory(audit=audit, min_free_bytes=2**62)  # 4 EiB: more than any disk has
    files = []
    for index in range(2):
        path = tmp_path / f"{index}.dcm"
        make_mr().save_as(path, enforce_file_format=True)
        files.append(str(path))
    _, output, _ = node.dcmtk(STORESCU, "--no-halt", *files)
    status = "DIMSE Status                  : 0xa700: Refused: Out of resources"
    assert output.count(status) == 2, output
    assert output.count("[spool disk: ") == output.count("below the configured minimum]") == 2
    code, output, _ = node.dcmtk(STORESCU, files[0])  # without --no-halt: storescu fails
    assert code == DCMTK_STORE_REFUSED and status in output, output
    assert [p for p in node.spool.root.rglob("*") if not p.is_dir()] == []  # no partial file
    assert not node.spool.quarantine_dir.exists() or not any(node.spool.quarantine_dir.iterdir())
    assert [(r.status, r.quarantined) for r in node.refusals] == [(0xA700, None)] * 3
    assert all(r.reason.startswith("spool disk: ") for r in node.refusals)
    lines = [event["message"] for event in audit.iter_events("store.refused")]
    assert len(lines) == 3
    assert all("0xA700 failure: out of resources: spool disk: " in line for line in lines)
    assert not any("quarantined" in line for line in lines)
    records = [node.records.get(timeout=10) for _ in range(2)]
    assert [(r.instances, r.failures, r.reason) for r in records] == [
        (0, 2, "released"),
        (0, 1, "released"),
    ]
    assert node.instances.empty()


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
