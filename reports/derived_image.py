"""T1 and Z maps as ordinary derived MR images: values any viewer's probe shows as ms or Z.

Parametric Maps are shown by few viewers as numbers (OHIF draws them as a colour overlay and
ignores their real-world value mapping); a classic MR Image Storage series with integer
pixels and RescaleSlope/Intercept is read the same way by every PACS workstation. One
single-frame instance per source plane, on the same grid (position, orientation, spacing,
frame of reference) as the source, each naming its source plane in SourceImageSequence.

Encoding (all visible in the written object):

- T1 (:data:`MapKind.T1_MS`): unsigned 16 bit, RescaleSlope 1, RescaleIntercept 0, i.e. the
  stored value *is* T1 in ms, rounded to 1 ms (a viewer that ignores the rescale still shows
  ms); 0 = no value (PixelPaddingValue 0); values above 65535 ms are clipped. Window C 1400 /
  W 1600 ms (600..2200 ms: CSF and lesions bright, WM darker than GM).
- Z (:data:`MapKind.Z_SCORE`): signed 16 bit, RescaleSlope 0.01, RescaleIntercept 0 (Z to two
  decimals, clipped to +/-327.67); no value = -32768 (PixelPaddingValue), shown black.
  Window C 0 / W 8 (Z -4..4).
- ImageType ``DERIVED\\SECONDARY\\T1 MAP`` (T1) or ``DERIVED\\SECONDARY\\OTHER`` (Z; value 3
  from the MR Image module's list), DerivationDescription and ImageComments say what the
  values are and their unit; the research-use text is in ImageComments and, via
  :func:`reports.identity.apply_identity`, in SeriesDescription.
- RescaleType is not written: the MR Image IOD has no Modality LUT module (dciodvfy flags it);
  the unit is in the description, the comments and the window explanation instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from reports.common import body_part_examined, is_multiframe
from reports.identity import ResultIdentity, apply_identity
from reports.parametric_map import MapKind
from reports.secondary_capture import copy_patient_study

__all__ = ["IMAGE_STYLES", "ImageStyle", "build_derived_images", "decode_values"]


@dataclass(frozen=True)
class ImageStyle:
    """Integer encoding and presentation of one kind of derived image."""

    what: str
    unit: str
    image_type_3: str
    slope: float
    signed: bool
    padding: int
    window_center: float
    window_width: float
    series_description: str

    @property
    def limits(self) -> tuple[int, int]:
        """Smallest and largest stored value (the padding value excluded)."""
        return (-32767, 32767) if self.signed else (0, 65535)


IMAGE_STYLES: dict[MapKind, ImageStyle] = {
    MapKind.T1_MS: ImageStyle(
        what="T1",
        unit="ms",
        image_type_3="T1 MAP",
        slope=1.0,
        signed=False,
        padding=0,
        window_center=1400.0,
        window_width=1600.0,
        series_description="T1 map ms",
    ),
    MapKind.Z_SCORE: ImageStyle(
        what="Z-score of T1",
        unit="Z",
        image_type_3="OTHER",
        slope=0.01,
        signed=True,
        padding=-32768,
        window_center=0.0,
        window_width=8.0,
        series_description="Z-score map",
    ),
}


def _encode(values: NDArray[np.floating], style: ImageStyle) -> NDArray[np.integer]:
    """Stored integers of ``values`` (float32 arithmetic: exact for these integer ranges)."""
    low, high = style.limits
    if not style.signed:
        low = 1  # 0 is "no value"; a real T1 is above 0.5 ms
    scaled = values.astype(np.float32)
    missing = np.isnan(scaled)
    scaled *= np.float32(1.0 / style.slope)
    np.rint(scaled, out=scaled)
    np.clip(scaled, low, high, out=scaled)
    scaled[missing] = style.padding
    return scaled.astype(np.int16 if style.signed else np.uint16)


def decode_values(ds: Dataset) -> NDArray[np.float64]:
    """Real-world values (ms or Z) of one written image; NaN where no value was stored."""
    stored = ds.pixel_array.astype(np.float64)
    values = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        values[stored == int(padding)] = np.nan
    return values


def _plane(source: Dataset, frame: int | None) -> dict[str, object]:
    """Geometry of one source plane (single-frame image, or 0-based frame of a multi-frame)."""
    if frame is None:
        return {
            "ImagePositionPatient": list(source.ImagePositionPatient),
            "ImageOrientationPatient": list(source.ImageOrientationPatient),
            "PixelSpacing": list(source.PixelSpacing),
            "SliceThickness": source.get("SliceThickness") or source.get("SpacingBetweenSlices"),
        }
    shared = source.SharedFunctionalGroupsSequence[0]
    own = source.PerFrameFunctionalGroupsSequence[frame]

    def item(keyword: str) -> Dataset:
        for group in (own, shared):
            if group.get(keyword):
                return group.get(keyword)[0]
        raise ValueError(f"multi-frame source {source.SOPInstanceUID} lacks {keyword}")

    measures = item("PixelMeasuresSequence")
    return {
        "ImagePositionPatient": list(item("PlanePositionSequence").ImagePositionPatient),
        "ImageOrientationPatient": list(item("PlaneOrientationSequence").ImageOrientationPatient),
        "PixelSpacing": list(measures.PixelSpacing),
        "SliceThickness": measures.get("SliceThickness") or measures.get("SpacingBetweenSlices"),
    }


def _planes(sources: Sequence[Dataset]) -> list[tuple[Dataset, int | None]]:
    if isinstance(sources, Dataset) or not isinstance(sources, Sequence) or not sources:
        raise TypeError("source_images must be a non-empty sequence of pydicom Datasets")
    if any(not isinstance(ds, Dataset) for ds in sources):
        raise TypeError("source_images must hold pydicom Datasets only")
    if len({str(ds.SeriesInstanceUID) for ds in sources}) != 1:
        raise ValueError("source images come from several series; one image series per series")
    if any(is_multiframe(ds) for ds in sources):
        if len(sources) != 1:
            raise ValueError("give exactly one multi-frame source image (or single-frame ones)")
        return [(sources[0], f) for f in range(int(sources[0].NumberOfFrames))]
    return [(ds, None) for ds in sources]


_MR_COPIED = (
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "EchoTrainLength",
    "InversionTime",
    "MagneticFieldStrength",
)
_MR_DEFAULTS = {
    "ScanningSequence": "RM",
    "SequenceVariant": "NONE",
    "ScanOptions": "",
    "MRAcquisitionType": "3D",
    "EchoTime": "",
    "EchoTrainLength": "",
}


def build_derived_images(
    source_images: Sequence[Dataset],
    values: NDArray[np.floating],
    kind: MapKind | str,
    *,
    series_number: int,
    identity: ResultIdentity,
    series_instance_uid: str | None = None,
    slab: int | None = None,
) -> list[Dataset]:
    """One derived MR image per source plane holding ``values`` (T1 in ms, or Z).

    Parameters
    ----------
    source_images : sequence of pydicom.dataset.Dataset
        The single-frame images of one series (one per plane of ``values``, same order), or
        the one multi-frame image (``values[f]`` is frame ``f + 1``). Headers are enough.
    values : numpy.ndarray
        ``[plane, row, column]`` real numbers; NaN = no value.
    kind : MapKind or str
        ``"T1_MS"`` or ``"Z_SCORE"``.
    series_number : int
        SeriesNumber of the new series (positive).
    identity : ResultIdentity
        Manufacturer, software name/version and research-use text.
    series_instance_uid : str, optional
        Generated when omitted.
    slab : int, optional
        Slab number, named in the series description (``"... slab 2"``).

    Returns
    -------
    list of pydicom.dataset.Dataset
        Ready for ``save_as``, InstanceNumber 1..n in source order.

    Raises
    ------
    TypeError
        For wrong argument types.
    ValueError
        For an unknown kind, a shape mismatch with the sources, infinite values, or sources
        from several series.
    """
    try:
        kind = MapKind(kind)
    except ValueError:
        allowed = ", ".join(k.value for k in MapKind)
        raise ValueError(f"unknown map kind {kind!r}; expected one of {allowed}") from None
    if not isinstance(identity, ResultIdentity):
        raise TypeError(f"identity must be a ResultIdentity, got {type(identity).__name__}")
    if isinstance(series_number, bool) or not isinstance(series_number, int) or series_number < 1:
        raise ValueError(f"series_number must be a positive int, got {series_number!r}")
    planes = _planes(source_images)
    if not isinstance(values, np.ndarray) or not np.issubdtype(values.dtype, np.number):
        raise TypeError("values must be a numeric numpy array")
    first = planes[0][0]
    shape = (len(planes), int(first.Rows), int(first.Columns))
    if values.shape != shape:
        raise ValueError(f"values shape {values.shape} does not match the sources {shape}")
    values = values.astype(np.float64, copy=False)
    if np.isinf(values).any():
        raise ValueError("values contain infinite voxels; use NaN for 'no value'")
    style = IMAGE_STYLES[kind]
    stored = _encode(values, style)
    series_uid = series_instance_uid or str(hd.UID())
    description = f"{identity.software_name} {style.series_description}"
    if slab is not None:
        description += f" slab {slab}"
    now = datetime.now(UTC)
    unit_text = "ms" if kind is MapKind.T1_MS else "Z-score (no unit)"
    comment = (
        f"{style.what} in {unit_text}: pixel x {style.slope:g} "
        f"({'no value = ' + str(style.padding)}); derived by {identity.software_name} "
        f"{identity.software_version}"
    )
    images = []
    for number, (source, frame) in enumerate(planes, start=1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = str(hd.UID())
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copy_patient_study(ds, source)
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.BodyPartExamined = body_part_examined(source)
        ds.FrameOfReferenceUID = source.FrameOfReferenceUID
        ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
        ds.PatientPosition = source.get("PatientPosition", "")
        ds.InstanceNumber = number
        ds.ContentDate = now.strftime("%Y%m%d")
        ds.ContentTime = now.strftime("%H%M%S")
        ds.ImageType = ["DERIVED", "SECONDARY", style.image_type_3]
        ds.DerivationDescription = f"{style.what} ({unit_text}) computed from the MP2RAGE"
        ds.ImageComments = f"{comment}. {identity.research_use_text}".strip()[:10240]
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if frame is not None:
            reference.ReferencedFrameNumber = frame + 1
        ds.SourceImageSequence = [reference]
        for keyword, value in _plane(source, frame).items():
            if value not in (None, ""):
                setattr(ds, keyword, value)
        for keyword in _MR_COPIED:
            value = source.get(keyword)
            if value not in (None, ""):
                setattr(ds, keyword, value)
            elif keyword in _MR_DEFAULTS:
                setattr(ds, keyword, _MR_DEFAULTS[keyword])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if style.signed else 0
        ds.PixelPaddingValue = style.padding
        ds.RescaleSlope = f"{style.slope:g}"
        ds.RescaleIntercept = "0"
        ds.WindowCenter = f"{style.window_center:g}"
        ds.WindowWidth = f"{style.window_width:g}"
        ds.WindowCenterWidthExplanation = (
            f"{style.what} {style.window_center - style.window_width / 2:g} to "
            f"{style.window_center + style.window_width / 2:g} {style.unit}"
        )
        ds.PixelData = np.ascontiguousarray(stored[number - 1]).tobytes()
        apply_identity(ds, identity)
        images.append(ds)
    return images
