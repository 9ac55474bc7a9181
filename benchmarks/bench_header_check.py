"""CPU of the storage SCP's per-instance header check, median ms per received instance.

Run from the repository root (or with ``PYTHONPATH`` set to another checkout, to compare)::

    python -m benchmarks.bench_header_check --out benchmarks/results/header_check.json

Times what ``StorageSCP._check`` reads per instance: :func:`read_received_header`, the four
UIDs (:func:`dicom_node.instance.header_uids`, or ``scp._header_uids`` in checkouts without
it) and :func:`read_instance_info`, on the synthetic 448 x 448 MR instances of
:func:`benchmarks.bench_receive.make_instances`, with pydicom's reading validation mode WARN
(pydicom's default) and IGNORE (acceptor processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

from benchmarks.bench_receive import make_instances
from dicom_node.instance import OwnResultMarkers, PseudonymKey, read_instance_info
from dicom_node.pixel_header import read_received_header

__all__ = ["main", "median_check_ms"]

_MODES = {"WARN": pydicom_config.WARN, "IGNORE": pydicom_config.IGNORE}


def _uid_reader() -> Callable[[Dataset], tuple[str, str, str, str]]:
    try:
        from dicom_node.instance import header_uids
    except ImportError:  # a checkout from before header_uids
        from dicom_node.scp import _header_uids as header_uids
    return header_uids


def median_check_ms(encoded: Sequence[bytes], rounds: int) -> float:
    """Median wall-clock ms of one header check over ``rounds`` passes of ``encoded``.

    Parameters
    ----------
    encoded : sequence of bytes
        Part-10 instances as received.
    rounds : int
        Passes over ``encoded`` after one warm-up pass.

    Returns
    -------
    float
    """
    uids = _uid_reader()
    markers = OwnResultMarkers(manufacturer="cordt1", software_name="cordt1")
    site = PseudonymKey(b"bench-secret-0123456789")

    def check(data: bytes) -> None:
        header = read_received_header(data, max_pixel_bytes=1 << 30)
        uids(header.dataset)
        read_instance_info(
            header.dataset,
            path=Path("/spool/x.dcm"),
            calling_ae="BENCH",
            received_at=0.0,
            own_markers=markers,
            pseudonyms=site,
            size_bytes=len(data),
        )

    for data in encoded:
        check(data)
    times_ns = []
    for _ in range(rounds):
        for data in encoded:
            start_ns = time.perf_counter_ns()
            check(data)
            times_ns.append(time.perf_counter_ns() - start_ns)
    return statistics.median(times_ns) / 1e6


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Command-line entry point; prints, writes (``--out``) and returns the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        make_instances(Path(scratch), args.instances)
        encoded = [path.read_bytes() for path in sorted(Path(scratch).rglob("*.dcm"))]
    before = pydicom_config.settings.reading_validation_mode
    results = {}
    try:
        for name, mode in _MODES.items():
            pydicom_config.settings.reading_validation_mode = mode
            results[name] = median_check_ms(encoded, args.rounds)
    finally:
        pydicom_config.settings.reading_validation_mode = before
    print(" | ".join(f"median {name} {ms:.3f} ms per instance" for name, ms in results.items()))
    report: dict[str, object] = {
        "median_ms_per_instance": results,
        "instances": args.instances,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "pydicom": pydicom.__version__,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
