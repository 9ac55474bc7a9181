"""Broken instances and malformed DIMSE requests for the hostile-input tests (no tests here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import RLELossless
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from tests.test_dicom_node_factories import make_mr


def _half_pixel_data(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _no_pixel_data(ds: Dataset) -> None:
    del ds.PixelData


def _huge(ds: Dataset) -> None:
    ds.Rows = 65535
    ds.Columns = 65535


def _bits_zero(ds: Dataset) -> None:
    ds.BitsAllocated = 0


def _rows_zero(ds: Dataset) -> None:
    ds.Rows = 0


def _columns_zero(ds: Dataset) -> None:
    ds.Columns = 0


def _samples_zero(ds: Dataset) -> None:
    ds.SamplesPerPixel = 0


def _samples_five(ds: Dataset) -> None:
    ds.SamplesPerPixel = 5  # the pixel data would be long enough for 1 sample only


def _frames_zero(ds: Dataset) -> None:
    ds.NumberOfFrames = 0


def _one_byte_short(ds: Dataset) -> None:
    ds.Rows = ds.Rows + 1  # the data now lack one row


def _no_fragments(ds: Dataset) -> None:
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds["PixelData"].value = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # offset table, no fragment


BROKEN: dict[str, tuple[Callable[[Dataset], None], str]] = {
    "half pixel data": (_half_pixel_data, "PixelData 256 B, header needs 512 B"),
    "missing PixelData": (_no_pixel_data, "no PixelData in an image instance"),
    "65535 x 65535": (_huge, "65535 x 65535 x 1 frame(s)"),
    "BitsAllocated 0": (_bits_zero, "BitsAllocated 0 is not 1, 8, 16, 32 or 64"),
    "Rows 0": (_rows_zero, "Rows 0 x Columns 16 with PixelData"),
    "Columns 0": (_columns_zero, "Rows 16 x Columns 0 with PixelData"),
    "SamplesPerPixel 0": (_samples_zero, "SamplesPerPixel 0 is not 1..4"),
    "SamplesPerPixel 5": (_samples_five, "SamplesPerPixel 5 is not 1..4"),
    "NumberOfFrames 0": (_frames_zero, "NumberOfFrames 0 is not >= 1"),
    "one row short": (_one_byte_short, "PixelData 512 B, header needs 544 B"),
    "no fragments": (_no_fragments, "encapsulated PixelData has no fragments"),
}
"""Name -> (how to break a 16 x 16 x 16-bit MR instance, text the refusal must contain)."""


def broken_mr(name: str) -> Dataset:
    """Return a 16 x 16 MR instance broken as ``BROKEN[name]`` says."""
    ds = make_mr()
    BROKEN[name][0](ds)
    return ds


def send_raw_c_store(
    assoc: Association,
    ds: Dataset,
    *,
    sop_instance_uid: str | None,
    message_id: int | None = 1,
    priority: int | None = 2,
    with_class_uid: bool = True,
    with_data_set: bool = True,
    timeout_s: float = 10.0,
) -> tuple[C_STORE | None, float]:
    """Send a C-STORE request built field by field (fields may be missing) and wait.

    ``priority=None`` leaves Priority (0000,0700) out of the command set (pynetdicom's
    primitive would otherwise send its default, 2). Returns the response primitive
    (``None`` if none came) and the seconds it took.
    The association's reactor is paused meanwhile, as pynetdicom's own ``send_c_store`` does.
    """
    request = C_STORE()
    if message_id is not None:
        request.MessageID = message_id
    if with_class_uid:
        request.AffectedSOPClassUID = ds.SOPClassUID
    if sop_instance_uid is not None:
        request.AffectedSOPInstanceUID = sop_instance_uid
    if priority is None:
        request._priority = None  # the setter refuses None; the encoder then drops it
    else:
        request.Priority = priority
    if with_data_set:
        request.DataSet = BytesIO(encode(ds, False, True))
    context_id = next(
        cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == ds.SOPClassUID
    )
    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            time.sleep(0.001)
        started = time.monotonic()
        assoc.dimse.send_msg(request, context_id)
        deadline = started + timeout_s
        response = None
        while time.monotonic() < deadline and response is None and assoc.is_established:
            if assoc.acse.is_aborted():  # the reactor is paused: look at the queue ourselves
                break
            _, message = assoc.dimse.get_msg(block=False)
            response = message if isinstance(message, C_STORE) else response
            time.sleep(0.002)
        return response, time.monotonic() - started
    finally:
        assoc._reactor_checkpoint.set()
