"""Receiving speed of our storage SCP against DCMTK storescp and Orthanc, all fed by storescu.

Run from the repository root::

    python -m benchmarks.bench_receive --out benchmarks/results/receive.json

Makes ``--instances`` single-frame MR instances (448 x 448, 16 bit, explicit VR little endian,
a few series of one synthetic study) in a scratch folder, then, for every sender count in
``--senders`` and every round (rounds interleaved, receiver order alternating per round):

- **ours**: :class:`dicom_node.scp.StorageSCP` in its own process, wired as ``cordt1 serve``
  wires it (service defaults, fsynced spool, the job-store rows batched through
  :class:`service.jobs.store.InstanceBatcher`, the exam tracker, an audit row per association);
  see :func:`serve_ours`;
- **dcmtk**: ``TCP_NODELAY=1 /usr/bin/storescp --fork +xa -dhl -od DIR PORT`` (writes
  without fsync);
- **orthanc**: ``/usr/sbin/Orthanc`` with its default storage settings (fsynced storage
  area, SQLite index); see :func:`run_orthanc`.

The same files are sent by N parallel ``TCP_NODELAY=1 /usr/bin/storescu`` processes, each with
its own share. The clock runs from starting the senders until the last one exits. Afterwards
every received file is checked: one per source instance, with a dataset (everything after the
file meta) byte-identical to the source. Throughput is images/s and MB/s (10^6 bytes of source
files per second); the report also holds ours/DCMTK ratios per sender count.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import secrets
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pynetdicom
import sqlalchemy
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

__all__ = [
    "ReceiverHandle",
    "SourceSet",
    "main",
    "make_instances",
    "run",
    "send_all",
    "serve_ours",
    "split_for_senders",
    "verify_received",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
STORESCP = "/usr/bin/storescp"  # DCMTK; pynetdicom installs a Python "storescp" on PATH
STORESCU = "/usr/bin/storescu"
SENDER_AE = "SCANNER"
RECEIVER_AE = "CORDT1"
_SENDER_ARGS = (STORESCU, "-aet", SENDER_AE, "-aec", RECEIVER_AE, "+sd", "+r", "+sp", "*.dcm")
_RECEIVER_ARGS = (STORESCP, "--fork", "+xa", "-dhl", "-aet", RECEIVER_AE)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ORTHANC = "/usr/sbin/Orthanc"
RECEIVERS = ("ours", "dcmtk", "orthanc")

DEFAULT_INSTANCES = 1000
DEFAULT_SERIES = 4
DEFAULT_SENDERS = (1, 4)
DEFAULT_ROUNDS = 2
IMAGE_SIZE = 448
MAX_SENDERS = 10  # the service's default max_associations

START_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 600.0
ARRIVAL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.02
KEEP_MARGIN_BYTES = 2 * 2**30  # free space left over when every measurement's files are kept


# ------------------------------------------------------------------------------ source data
@dataclass(frozen=True)
class SourceSet:
    """The instances every receiver gets.

    Attributes
    ----------
    paths : tuple of pathlib.Path
        Part-10 files, sorted (series by series).
    datasets : dict of str to tuple of (int, str)
        SOPInstanceUID -> (dataset bytes after the file meta, SHA-256 of those bytes).
    total_bytes : int
        Sum of the file sizes (what the senders read).
    """

    paths: tuple[Path, ...]
    datasets: dict[str, tuple[int, str]]
    total_bytes: int


def make_instances(
    folder: Path, n_instances: int, n_series: int = DEFAULT_SERIES, seed: int = 0
) -> SourceSet:
    """Write ``n_instances`` synthetic 448 x 448 16-bit MR instances of one study.

    The instances are spread evenly over ``n_series`` series; names sort series by series.
    Patient attributes are synthetic (no patient data).

    Parameters
    ----------
    folder : pathlib.Path
        Output folder; created if missing.
    n_instances : int
        Number of instances (>= 1).
    n_series : int
        Number of series (1..n_instances).
    seed : int
        Seed of the random pixel values.

    Returns
    -------
    SourceSet

    Raises
    ------
    ValueError
        If ``n_instances < 1`` or ``n_series`` is not in 1..n_instances.
    """
    if n_instances < 1:
        raise ValueError(f"n_instances must be >= 1, got {n_instances}")
    if not 1 <= n_series <= n_instances:
        raise ValueError(f"n_series must be in 1..{n_instances}, got {n_series}")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = generate_uid()
    frame_uid = generate_uid()
    series_sizes = [len(part) for part in np.array_split(np.arange(n_instances), n_series)]
    paths: list[Path] = []
    for series_index, series_size in enumerate(series_sizes):
        series_uid = generate_uid()
        for instance_index in range(series_size):
            pixels = rng.integers(0, 4096, size=(IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint16)
            ds = _mr_dataset(
                study_uid, series_uid, frame_uid, series_index, instance_index, series_size
            )
            ds.PixelData = pixels.tobytes()
            path = folder / f"s{series_index:02d}_i{instance_index:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    datasets: dict[str, tuple[int, str]] = {}
    for path in paths:
        sop_uid, size, digest = dataset_digest(path)
        datasets[sop_uid] = (size, digest)
    return SourceSet(
        paths=tuple(paths),
        datasets=datasets,
        total_bytes=sum(path.stat().st_size for path in paths),
    )


def _mr_dataset(
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_index: int,
    instance_index: int,
    series_size: int,
) -> Dataset:
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "BENCH"
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.SeriesDescription = f"bench_receive_{series_index:02d}"
    ds.PatientName = "BENCH^RECEIVE"
    ds.PatientID = "BENCH-RECEIVE"
    ds.MagneticFieldStrength = "7"
    ds.ProtocolName = "bench_receive"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_index + 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_index + 1
    ds.ImagePositionPatient = [-67.2, -67.2, float(instance_index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.ImagesInAcquisition = series_size
    ds.SliceThickness = "1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = IMAGE_SIZE
    ds.Columns = IMAGE_SIZE
    ds.PixelSpacing = ["0.3", "0.3"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def dataset_digest(path: Path) -> tuple[str, int, str]:
    """SOPInstanceUID, size and SHA-256 of the dataset part of a Part-10 file.

    The file meta is skipped: each receiver writes its own (implementation UID, AE titles).

    Parameters
    ----------
    path : pathlib.Path
        A Part-10 file with a File Meta Information Group Length.

    Returns
    -------
    tuple of (str, int, str)

    Raises
    ------
    ValueError
        If the file meta has no group length or no SOP instance UID.
    """
    meta = read_file_meta_info(path)
    group_length = meta.get("FileMetaInformationGroupLength")
    sop_uid = meta.get("MediaStorageSOPInstanceUID")
    if group_length is None or not sop_uid:
        raise ValueError(f"{path.name}: file meta lacks group length or SOP instance UID")
    data = path.read_bytes()[128 + 4 + 12 + int(group_length) :]
    return str(sop_uid), len(data), hashlib.sha256(data).hexdigest()


def split_for_senders(source: SourceSet, folder: Path, n_senders: int) -> list[Path]:
    """Give each of ``n_senders`` senders its own folder with a contiguous share of the files.

    Files are hard-linked (copied where links are not possible).

    Parameters
    ----------
    source : SourceSet
        The instances.
    folder : pathlib.Path
        Parent of the per-sender folders (``sender00``, ``sender01``, ...).
    n_senders : int
        Number of senders (1..number of instances).

    Returns
    -------
    list of pathlib.Path
        One folder per sender.

    Raises
    ------
    ValueError
        If ``n_senders`` is not in 1..number of instances.
    """
    if not 1 <= n_senders <= len(source.paths):
        raise ValueError(f"n_senders must be in 1..{len(source.paths)}, got {n_senders}")
    shares = np.array_split(np.arange(len(source.paths)), n_senders)
    folders = []
    for index, share in enumerate(shares):
        target = folder / f"sender{index:02d}"
        target.mkdir(parents=True, exist_ok=True)
        for position in share:
            path = source.paths[int(position)]
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copyfile(path, target / path.name)
        folders.append(target)
    return folders


# ------------------------------------------------------------------------------ receivers
@dataclass(frozen=True)
class ReceiverHandle:
    """A running receiver.

    Attributes
    ----------
    name : str
        ``"ours"`` or ``"dcmtk"``.
    port : int
        TCP port it listens on (127.0.0.1).
    pid : int
        Process id (for CPU accounting).
    received_dir : pathlib.Path
        Where it writes instances.
    list_files : Callable[[], list[pathlib.Path]]
        Lists the complete instances it has written so far.
    """

    name: str
    port: int
    pid: int
    received_dir: Path
    list_files: Callable[[], list[Path]]


def serve_ours(spool_dir: str, db_url: str, acceptor_processes: str = "") -> None:
    """Run our SCP as ``cordt1 serve`` does, until standard input is closed.

    Child-process entry of the benchmark. Prints ``PORT <n>`` once listening (port chosen by
    the OS). Uses the service's default node settings (max associations, free-space limit,
    128 KiB PDUs), allows calling AE ``SCANNER`` from 127.0.0.1, and per instance does what
    ``Service.on_instance`` does: a job-store row and the exam tracker; per association an
    audit row. Only Celery and the watcher thread are left out.

    Parameters
    ----------
    spool_dir : str
        Spool folder.
    db_url : str
        SQLAlchemy URL of the job store (``sqlite:////abs/path.sqlite``).
    acceptor_processes : str, optional
        ``node.acceptor_processes`` as text; empty: the service default.
    """
    from dicom_node.completion import ExamTracker
    from dicom_node.instance import InstanceInfo, PseudonymKey
    from dicom_node.scp import AssociationRecord, ScpConfig, StorageSCP
    from dicom_node.spool import Spool
    from service.inputs.exam import own_markers
    from service.jobs.store import InstanceBatcher, JobStore
    from service.server import instance_row, record_association
    from service.settings import NodeSettings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    node = NodeSettings(ae_title=RECEIVER_AE, host="127.0.0.1", port=0)
    if acceptor_processes:
        node = node.model_copy(update={"acceptor_processes": int(acceptor_processes)})
    store = JobStore(db_url)
    batcher = InstanceBatcher(store, flush_ms=node.record_flush_ms)
    batcher.start()
    tracker = ExamTracker(settle_s=node.settle_s, stale_s=node.stale_s)
    lock = threading.Lock()

    def on_instance(info: InstanceInfo) -> None:
        batcher.submit(instance_row(info))
        if info.is_own_result:
            return
        with lock:
            tracker.add(info, time.time())

    def on_association(record: AssociationRecord) -> None:
        record_association(store, record)

    config = ScpConfig(
        ae_title=node.ae_title,
        host=node.host,
        port=node.port,
        allowed_calling_aes={SENDER_AE: "127.0.0.1"},
        max_associations=node.max_associations,
        # every sender uses SENDER_AE: allow up to MAX_SENDERS of them at once
        max_associations_per_ae=max(MAX_SENDERS, node.max_associations_per_ae),
        min_free_bytes=node.min_free_mb * 1024 * 1024,
        max_pixel_bytes=node.max_pixel_mb * 1024 * 1024,
        network_timeout_s=node.idle_timeout_s,
        acceptor_processes=node.acceptor_processes,
        direct_pdata=node.direct_pdata,
    )
    scp = StorageSCP(
        config,
        Spool(Path(spool_dir)),
        on_instance=on_instance,
        on_association=on_association,
        own_markers=own_markers(),
        pseudonyms=PseudonymKey(secrets.token_bytes(32)),
    )
    scp.start()
    try:
        print(f"PORT {scp.port}", flush=True)
        sys.stdin.read()  # returns at EOF: the benchmark closed our standard input
    finally:
        scp.stop()
        batcher.close()
        store.close()


@contextmanager
def run_ours(workdir: Path, acceptor_processes: int | None = None) -> Iterator[ReceiverHandle]:
    """Start :func:`serve_ours` in a child process; stop it on exit.

    Parameters
    ----------
    workdir : pathlib.Path
        Fresh folder for the spool, the job store and the log.
    acceptor_processes : int, optional
        ``node.acceptor_processes``; ``None``: the service default.

    Yields
    ------
    ReceiverHandle

    Raises
    ------
    RuntimeError
        If the child does not report its port within ``START_TIMEOUT_S``.
    """
    spool = workdir / "spool"
    db_url = f"sqlite:///{(workdir / 'jobs.sqlite').resolve()}"
    code = "import sys; from benchmarks.bench_receive import serve_ours; serve_ours(*sys.argv[1:])"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    log_path = workdir / "scp.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(spool), db_url, str(acceptor_processes or "")],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        port = _read_port(proc, log_path)
        yield ReceiverHandle(
            name="ours",
            port=port,
            pid=proc.pid,
            received_dir=spool,
            list_files=lambda: sorted(spool.glob("*/*/*.dcm")),
        )
    finally:
        _stop(proc, lambda: proc.stdin.close() if proc.stdin else None)


def _read_port(proc: subprocess.Popen[str], log_path: Path) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                line = proc.stdout.readline()
                if line.startswith("PORT "):
                    return int(line.split()[1])
                if not line:
                    break
    raise RuntimeError(f"our SCP did not start; log tail: {_tail(log_path)}")


@contextmanager
def run_dcmtk(workdir: Path) -> Iterator[ReceiverHandle]:
    """Start DCMTK ``storescp --fork`` (TCP_NODELAY on) in its own process group.

    Parameters
    ----------
    workdir : pathlib.Path
        Fresh folder for the received files and the log.

    Yields
    ------
    ReceiverHandle

    Raises
    ------
    RuntimeError
        If storescp does not accept connections within ``START_TIMEOUT_S``.
    """
    received = workdir / "received"
    received.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TCP_NODELAY="1")
    log_path = workdir / "storescp.log"
    for _attempt in range(3):  # a port found free can be taken before storescp binds it
        port = _free_port()
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*_RECEIVER_ARGS, "-od", str(received), str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # forked children share the group: stop them together
            )
        if _wait_for_port(port, proc):
            break
        _stop(proc, lambda p=proc: _signal_group(p))
    else:
        raise RuntimeError(f"storescp did not start; log tail: {_tail(log_path)}")
    try:
        yield ReceiverHandle(
            name="dcmtk",
            port=port,
            pid=proc.pid,
            received_dir=received,
            list_files=lambda: sorted(p for p in received.iterdir() if p.is_file()),
        )
    finally:
        _stop(proc, lambda: _signal_group(proc))


@contextmanager
def run_orthanc(workdir: Path) -> Iterator[ReceiverHandle]:
    """Start Orthanc (``/usr/sbin/Orthanc``) with its default storage settings.

    The configuration changes only what a throw-away instance needs: free ports, a storage
    and index folder in ``workdir``, AE title ``CORDT1``, no plugins, no HTTP access from
    other hosts. Orthanc's defaults stay, among them ``SyncStorageArea`` (received files
    are fsynced, as ours are) and its SQLite index.

    Parameters
    ----------
    workdir : pathlib.Path
        Fresh folder for the storage, the index and the log.

    Yields
    ------
    ReceiverHandle

    Raises
    ------
    RuntimeError
        If Orthanc does not accept DICOM connections within ``START_TIMEOUT_S``.
    """
    storage = workdir / "storage"
    index = workdir / "index"
    log_path = workdir / "orthanc.log"
    for _attempt in range(3):  # a port found free can be taken before Orthanc binds it
        port, http_port = _free_port(), _free_port()
        config = {
            "Name": "bench-receive",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(index),
            "Plugins": [],
            "HttpPort": http_port,
            "DicomPort": port,
            "DicomAet": RECEIVER_AE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
        }
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [ORTHANC, str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if _wait_for_port(port, proc):
            break
        _stop(proc, proc.terminate)
    else:
        raise RuntimeError(f"Orthanc did not start; log tail: {_tail(log_path)}")
    try:
        yield ReceiverHandle(
            name="orthanc",
            port=port,
            pid=proc.pid,
            received_dir=storage,
            list_files=lambda: sorted(p for p in storage.glob("*/*/*") if p.is_file()),
        )
    finally:
        _stop(proc, proc.terminate)


def _signal_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the group storescp leads (start_new_session)


def _stop(proc: subprocess.Popen[Any], ask: Callable[[], object]) -> None:
    ask()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
    for stream in (proc.stdout, proc.stdin):
        if stream is not None and not stream.closed:
            stream.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            time.sleep(POLL_S)
    return False


def _tail(path: Path, n_chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return "<no log>"


# ------------------------------------------------------------------------------ sending
def send_all(port: int, folders: Sequence[Path], log_dir: Path) -> float:
    """Send every folder with its own ``storescu`` process, all at once; return seconds.

    Parameters
    ----------
    port : int
        Receiver port on 127.0.0.1.
    folders : sequence of pathlib.Path
        One folder of ``*.dcm`` files per sender.
    log_dir : pathlib.Path
        Where each sender's output goes (``storescu_<n>.log``).

    Returns
    -------
    float
        Wall time from starting the first sender until the last one exited.

    Raises
    ------
    RuntimeError
        If a sender fails or takes longer than ``SEND_TIMEOUT_S``.
    """
    env = dict(os.environ, TCP_NODELAY="1")
    logs = [log_dir / f"storescu_{index:02d}.log" for index in range(len(folders))]
    handles = [log.open("wb") for log in logs]
    try:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*_SENDER_ARGS, "127.0.0.1", str(port), str(folder)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
            for folder, handle in zip(folders, handles, strict=True)
        ]
        deadline = time.monotonic() + SEND_TIMEOUT_S
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(None)
        seconds = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.close()
    for code, log in zip(codes, logs, strict=True):
        if code != 0:
            raise RuntimeError(f"storescu exited with {code}; log tail: {_tail(log)}")
    return seconds


def verify_received(
    list_files: Callable[[], list[Path]], source: SourceSet, timeout_s: float = ARRIVAL_TIMEOUT_S
) -> None:
    """Check that every source instance arrived once with byte-identical dataset.

    Waits (polling, up to ``timeout_s``) until as many files as instances are there.

    Parameters
    ----------
    list_files : Callable[[], list of pathlib.Path]
        Lists the receiver's complete files.
    source : SourceSet
        What was sent.
    timeout_s : float
        How long to wait for missing files (>= 0).

    Raises
    ------
    ValueError
        If ``timeout_s`` is negative.
    RuntimeError
        If files are missing, extra, or differ in size or content.
    """
    if timeout_s < 0:
        raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
    expected = len(source.datasets)
    deadline = time.monotonic() + timeout_s
    files = list_files()
    while len(files) < expected and time.monotonic() < deadline:
        time.sleep(POLL_S)
        files = list_files()
    if len(files) != expected:
        raise RuntimeError(f"{len(files)} files received, {expected} sent")
    seen: dict[str, tuple[int, str]] = {}
    for path in files:
        sop_uid, size, digest = dataset_digest(path)
        seen[sop_uid] = (size, digest)
    missing = set(source.datasets) - set(seen)
    if missing:
        raise RuntimeError(f"{len(missing)} instances missing from {expected} sent")
    sent_bytes = sum(size for size, _ in source.datasets.values())
    got_bytes = sum(size for size, _ in seen.values())
    if got_bytes != sent_bytes:
        raise RuntimeError(f"received {got_bytes} dataset bytes, sent {sent_bytes}")
    differ = [uid for uid, value in source.datasets.items() if seen[uid] != value]
    if differ:
        raise RuntimeError(f"{len(differ)} received datasets differ from the sent bytes")


# ------------------------------------------------------------------------------ the run
def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process and its live descendants (Linux /proc).

    ``None`` where /proc is missing. Descendants are our acceptor processes.
    """
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, CPU seconds)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        ticks = int(fields[11]) + int(fields[12])
        stats[int(stat.parent.name)] = (int(fields[1]), ticks / os.sysconf("SC_CLK_TCK"))
    if pid not in stats:
        return None
    tree = {pid}
    grew = True
    while grew:
        children = {child for child, (parent, _) in stats.items() if parent in tree}
        grew = not children <= tree
        tree |= children
    return sum(stats[member][1] for member in tree)


def measure(
    receiver: str,
    folders: Sequence[Path],
    source: SourceSet,
    workdir: Path,
    *,
    acceptor_processes: int | None = None,
    keep_files: bool = False,
) -> dict[str, Any]:
    """Start a fresh receiver, send everything, verify, stop; return the numbers.

    Parameters
    ----------
    receiver : {"ours", "dcmtk"}
        Which receiver.
    folders : sequence of pathlib.Path
        One folder per sender (see :func:`split_for_senders`).
    source : SourceSet
        What is sent (for the checks).
    workdir : pathlib.Path
        Fresh folder for this measurement; removed afterwards.
    acceptor_processes : int, optional
        Our ``node.acceptor_processes``; ``None``: the service default.
    keep_files : bool, optional
        Leave ``workdir`` for the caller to remove (see :func:`run`); default: remove it.

    Returns
    -------
    dict
        ``seconds``, ``images_per_s``, ``mb_per_s`` and, for ``ours`` and ``orthanc``,
        ``receiver_cpu_s`` and ``cpu_ms_per_image`` (the receiver and its child processes).

    Raises
    ------
    ValueError
        If ``receiver`` is unknown.
    """
    starters: dict[str, Callable[[Path], AbstractContextManager[ReceiverHandle]]] = {
        "ours": functools.partial(run_ours, acceptor_processes=acceptor_processes),
        "dcmtk": run_dcmtk,
        "orthanc": run_orthanc,
    }
    if receiver not in starters:
        raise ValueError(f"receiver must be one of {RECEIVERS}, got {receiver!r}")
    workdir.mkdir(parents=True)
    try:
        with starters[receiver](workdir) as handle:
            cpu_before = _cpu_s(handle.pid) if receiver != "dcmtk" else None
            seconds = send_all(handle.port, folders, workdir)
            cpu_after = _cpu_s(handle.pid) if receiver != "dcmtk" else None
            verify_received(handle.list_files, source)
    finally:
        if not keep_files:
            shutil.rmtree(workdir, ignore_errors=True)
    n_images = len(source.paths)
    result: dict[str, Any] = {
        "seconds": seconds,
        "images_per_s": n_images / seconds,
        "mb_per_s": source.total_bytes / 1e6 / seconds,
    }
    if cpu_before is not None and cpu_after is not None:
        result["receiver_cpu_s"] = cpu_after - cpu_before
        result["cpu_ms_per_image"] = (cpu_after - cpu_before) * 1e3 / n_images
    return result


def _settle_s() -> float:
    """How long file creation stays slower after many deletions (ext4 without journal).

    Without a journal, ext4 skips every inode of the block group freed in the last 60 s
    when it allocates one (``recently_deleted``; 300 s more while the inode's table block
    is dirty, which writeback ends after ``dirty_expire``), each skip a buffer-cache lookup:
    after a receiver's 1000 files are deleted, the next receiver's creations cost several
    times more CPU (28 % of our acceptor's CPU in a ``perf`` profile).
    """
    try:
        centis = int(Path("/proc/sys/vm/dirty_expire_centisecs").read_text())
    except (OSError, ValueError):
        centis = 3000
    return max(centis / 100 + 5.0, 60.0) + 5.0


def _default_acceptors() -> int:
    from service.settings import NodeSettings

    return NodeSettings().acceptor_processes


def machine_info() -> dict[str, Any]:
    """CPU count, platform and versions of Python, the DICOM libraries and DCMTK."""
    try:
        banner = subprocess.run(
            [STORESCP, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.splitlines()
        dcmtk = banner[0].strip("$ ").removeprefix("dcmtk: ") if banner else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        dcmtk = "not found"
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "numpy": np.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "dcmtk": dcmtk,
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [run["images_per_s"] for run in runs]
    mbs = [run["mb_per_s"] for run in runs]
    out: dict[str, Any] = {
        "median_images_per_s": statistics.median(rates),
        "best_images_per_s": max(rates),
        "median_mb_per_s": statistics.median(mbs),
        "best_mb_per_s": max(mbs),
        "rounds": runs,
    }
    cpu = [run["cpu_ms_per_image"] for run in runs if "cpu_ms_per_image" in run]
    if cpu:
        out["median_cpu_ms_per_image"] = statistics.median(cpu)
    return out


def _ratios(
    ours: dict[int, list[dict[str, Any]]], other: dict[int, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Ours / other images per second per sender count: per round, median, best vs best."""
    out: dict[str, Any] = {}
    for count, our_runs in ours.items():
        their_runs = other[count]
        paired = [
            a["images_per_s"] / b["images_per_s"]
            for a, b in zip(our_runs, their_runs, strict=True)
        ]
        out[str(count)] = {
            "median_of_rounds": statistics.median(paired),
            "best_vs_best": max(r["images_per_s"] for r in our_runs)
            / max(r["images_per_s"] for r in their_runs),
            "per_round": paired,
        }
    return out


def run(
    n_instances: int = DEFAULT_INSTANCES,
    senders: Sequence[int] = DEFAULT_SENDERS,
    rounds: int = DEFAULT_ROUNDS,
    n_series: int = DEFAULT_SERIES,
    scratch: Path | None = None,
    progress: Callable[[str], None] | None = None,
    acceptor_processes: int | None = None,
) -> dict[str, Any]:
    """Run every measurement and return the JSON-ready report.

    Parameters
    ----------
    n_instances : int
        Instances sent to each receiver per measurement.
    senders : sequence of int
        Parallel sender counts (each 1..min(10, n_instances); 10 is the service's
        association limit).
    rounds : int
        Rounds; each round measures every (sender count, receiver) pair once, receivers in
        alternating order.
    n_series : int
        Series the instances are spread over (capped at ``n_instances``).
    scratch : pathlib.Path, optional
        Parent of the scratch folder (default: the system temp folder). The disk matters:
        both receivers write there, ours with fsync.
    progress : Callable[[str], None], optional
        Receives one line per measurement.
    acceptor_processes : int, optional
        Our ``node.acceptor_processes``; ``None``: the service default.

    Returns
    -------
    dict

    Raises
    ------
    ValueError
        On an invalid count.
    RuntimeError
        If DCMTK is missing, a sender fails or a receiver lost or altered an instance.
    """
    if n_instances < 1:
        raise ValueError(f"n_instances must be >= 1, got {n_instances}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not senders:
        raise ValueError("senders must hold at least one sender count")
    limit = min(MAX_SENDERS, n_instances)
    for count in senders:
        if not 1 <= count <= limit:
            raise ValueError(f"sender counts must be in 1..{limit}, got {count}")
    for binary in (STORESCP, STORESCU):
        if not Path(binary).is_file():
            raise RuntimeError(f"DCMTK {binary} not found (apt-get install dcmtk)")
    if not Path(ORTHANC).is_file():
        raise RuntimeError(f"{ORTHANC} not found (apt-get install orthanc)")
    senders = list(dict.fromkeys(senders))
    say = progress or (lambda _line: None)
    with tempfile.TemporaryDirectory(prefix="bench_receive_", dir=scratch) as tmp:
        root = Path(tmp)
        source = make_instances(root / "source", n_instances, min(n_series, n_instances))
        shares = {count: split_for_senders(source, root / f"x{count}", count) for count in senders}
        # No receiver may pay for the previous one's deletions (see _settle_s): every
        # measurement's files stay until the end if there is room, else each is removed at
        # once and the next receiver starts after the slow-creation window.
        received_bytes = source.total_bytes * rounds * len(senders) * len(RECEIVERS)
        keep_files = shutil.disk_usage(root).free > received_bytes + KEEP_MARGIN_BYTES
        settle_s = 0.0 if keep_files else _settle_s()
        results: dict[str, dict[int, list[dict[str, Any]]]] = {
            name: {count: [] for count in senders} for name in RECEIVERS
        }
        for round_index in range(rounds):
            order = RECEIVERS if round_index % 2 == 0 else RECEIVERS[::-1]
            for count in senders:
                for name in order:
                    workdir = root / f"run_{name}_{count}_{round_index}"
                    numbers = measure(
                        name,
                        shares[count],
                        source,
                        workdir,
                        acceptor_processes=acceptor_processes,
                        keep_files=keep_files,
                    )
                    time.sleep(settle_s)
                    results[name][count].append({"round": round_index, **numbers})
                    say(
                        f"round {round_index + 1}/{rounds} {name:5s} {count} sender(s): "
                        f"{numbers['images_per_s']:7.1f} images/s "
                        f"{numbers['mb_per_s']:6.1f} MB/s"
                    )
    ratios = {other: _ratios(results["ours"], results[other]) for other in ("dcmtk", "orthanc")}
    return {
        "benchmark": "receive",
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {
            "instances": n_instances,
            "series": min(n_series, n_instances),
            "rows": IMAGE_SIZE,
            "columns": IMAGE_SIZE,
            "bits_allocated": 16,
            "transfer_syntax": str(ExplicitVRLittleEndian),
            "source_bytes": source.total_bytes,
            "senders": senders,
            "rounds": rounds,
            "acceptor_processes": acceptor_processes or _default_acceptors(),
            "received_files": "kept until the end of the run"
            if keep_files
            else f"removed after each measurement, then {settle_s:g} s of waiting",
            "sender_command": f"TCP_NODELAY=1 {STORESCU} -aet {SENDER_AE} -aec {RECEIVER_AE} "
            "+sd +r +sp '*.dcm' 127.0.0.1 PORT DIR",
            "receivers": {
                "ours": "dicom_node.scp.StorageSCP in a child process, service defaults, "
                "acceptor_processes processes, each connection handed to the least busy, "
                "header read up to the pixel data, fdatasynced spool file + folder fsync "
                "before the answer, job-store rows through service.jobs.store.InstanceBatcher "
                "(one SQLite transaction per <= record_flush_ms), ExamTracker per instance",
                "dcmtk": f"TCP_NODELAY=1 {STORESCP} --fork +xa -dhl -od DIR PORT (no fsync)",
                "orthanc": f"{ORTHANC} (default storage settings: SyncStorageArea, SQLite index)",
            },
        },
        "verified": "every instance arrived once per run with a byte-identical dataset",
        "results": {
            name: {str(count): _summary(runs) for count, runs in per_count.items()}
            for name, per_count in results.items()
        },
        "ratio_ours_to_dcmtk": ratios["dcmtk"],
        "ratio_ours_to_orthanc": ratios["orthanc"],
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument(
        "--instances", type=int, default=DEFAULT_INSTANCES, help="instances (default: 1000)"
    )
    parser.add_argument(
        "--senders",
        type=int,
        nargs="+",
        default=list(DEFAULT_SENDERS),
        help="parallel sender counts (default: 1 4)",
    )
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds (default: 2)"
    )
    parser.add_argument(
        "--series", type=int, default=DEFAULT_SERIES, help="series per study (default: 4)"
    )
    parser.add_argument(
        "--scratch", type=Path, default=None, help="parent of the scratch folder (default: TMP)"
    )
    parser.add_argument(
        "--acceptors",
        type=int,
        default=None,
        help="our node.acceptor_processes (default: the service default)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; writes the report to ``--out`` and returns it."""
    args = _parse(argv)
    report = run(
        args.instances,
        args.senders,
        args.rounds,
        args.series,
        scratch=args.scratch,
        acceptor_processes=args.acceptors,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for count, ratio in report["ratio_ours_to_dcmtk"].items():
        rates = {name: report["results"][name][count]["median_images_per_s"] for name in RECEIVERS}
        print(
            f"{count} sender(s): ours {rates['ours']:.0f}, DCMTK {rates['dcmtk']:.0f}, "
            f"Orthanc {rates['orthanc']:.0f} images/s; ours/DCMTK "
            f"{ratio['median_of_rounds']:.2f}, ours/Orthanc "
            f"{report['ratio_ours_to_orthanc'][count]['median_of_rounds']:.2f}",
            file=sys.stderr,
        )
    print(f"written to {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
