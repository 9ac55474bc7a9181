"""DICOM Parametric Map (float32) of a T1 map or a Z-score map on the grid of its source series.

One map per source series: ``values[f]`` is the plane of source frame ``f`` (the f-th
single-frame source image, or frame ``f + 1`` of the one multi-frame source). Volumes loaded by
``service.inputs.volumes`` are in slice order; use ``SeriesVolume.to_source_order`` first when the
source is a multi-frame instance whose frames are not sorted by position.

Choices (all visible in the written object):

- Pixel data: 32-bit float (FloatPixelData), Explicit VR Little Endian.
- NaN means "no value" (outside the lookup range, outside the mask) and is written as 0:
  a Parametric Map has no padding value for float data. +/-inf is refused (it is a bug
  upstream, not a measurement).
- Real World Value Mapping, identity slope/intercept over the stored float range:
  T1 -> unit UCUM ``ms`` "millisecond", quantity DCM 113063 "T1";
  Z  -> unit UCUM ``1`` "no units", quantity DCM 113071 "Z-score"
  (both quantities from CID 7180, both units from CID 7181).
- Window (VOI LUT function LINEAR_EXACT, so widths below 1 stay valid): T1 0..2500 ms,
  Z -4..4.
- BodyPartExamined copied from the source, else ``CSPINE`` (without it dciodvfy reports
  Laterality missing). ContentQualification RESEARCH while a research-use text is set,
  PRODUCT otherwise. Identity and research-use text via :func:`reports.identity.apply_identity`.
- Sources with missing Type 2 patient/study attributes are accepted: the writer works on
  header-only copies of the sources in which those attributes are present but empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from reports.common import body_part_examined, prepare_sources
from reports.identity import ResultIdentity, apply_identity

__all__ = ["MAP_STYLES", "MapKind", "MapStyle", "build_parametric_map"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class MapKind(StrEnum):
    """What the map holds."""

    T1_MS = "T1_MS"
    Z_SCORE = "Z_SCORE"


@dataclass(frozen=True)
class MapStyle:
    """Coding and presentation of one kind of map."""

    unit: Code
    quantity: Code
    lut_label: str
    lut_explanation: str
    content_label: str
    content_description: str
    series_description: str
    window_center: float
    window_width: float
    window_explanation: str


MAP_STYLES: dict[MapKind, MapStyle] = {
    MapKind.T1_MS: MapStyle(
        unit=Code("ms", "UCUM", "millisecond"),
        quantity=Code("113063", "DCM", "T1"),
        lut_label="T1_MS",
        lut_explanation="T1 relaxation time (ms) from MP2RAGE",
        content_label="T1_MAP",
        content_description="T1 map (ms)",
        series_description="T1 param map",
        window_center=1250.0,
        window_width=2500.0,
        window_explanation="T1 0 to 2500 ms",
    ),
    MapKind.Z_SCORE: MapStyle(
        unit=Code("1", "UCUM", "no units"),
        quantity=Code("113071", "DCM", "Z-score"),
        lut_label="Z_SCORE",
        lut_explanation="Z-score of T1 against healthy controls",
        content_label="ZSCORE_MAP",
        content_description="T1 Z-score map",
        series_description="Z param map",
        window_center=0.0,
        window_width=8.0,
        window_explanation="Z -4 to 4",
    ),
}


def _prepare_values(values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    if not isinstance(values, np.ndarray):
        raise TypeError(f"values must be a numpy array, got {type(values).__name__}")
    if values.dtype == np.bool_ or not (
        np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
    ):
        raise TypeError(f"values must be real numbers (int or float), got dtype {values.dtype}")
    if values.ndim == 2 and shape[0] == 1:
        values = values[np.newaxis]
    if values.shape != shape:
        raise ValueError(
            f"values shape {values.shape} does not match the sources (frames, rows, columns) "
            f"= {shape}"
        )
    as_float = values.astype(np.float64, copy=False)
    infinite = int(np.count_nonzero(np.isinf(as_float)))
    if infinite:
        raise ValueError(f"values contain {infinite} infinite voxels; use NaN for 'no value'")
    if np.nanmax(np.abs(as_float), initial=0.0) > _FLOAT32_MAX:
        raise ValueError("values exceed the float32 range")
    return np.nan_to_num(as_float, nan=0.0).astype(np.float32)


def build_parametric_map(
    source_images: Sequence[Dataset],
    values: np.ndarray,
    kind: MapKind | str,
    *,
    series_number: int,
    identity: ResultIdentity,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    plane_positions: Sequence[hd.PlanePositionSequence] | None = None,
    slab: int | None = None,
) -> hd.pm.ParametricMap:
    """Build a float32 Parametric Map of ``values`` derived from one source series.

    Parameters
    ----------
    source_images : sequence of pydicom.dataset.Dataset
        The single-frame images of one series (one per plane of ``values``, same order), or
        the one multi-frame image. Headers are enough; pixel data is never read.
    values : numpy.ndarray
        ``[frame, row, column]`` real numbers (T1 in ms, or Z). NaN is written as 0.
    kind : MapKind or str
        ``"T1_MS"`` or ``"Z_SCORE"``.
    series_number : int
        SeriesNumber of the result series (positive).
    identity : ResultIdentity
        Manufacturer, software name/version and research-use text.
    series_instance_uid, sop_instance_uid : str, optional
        New UIDs are generated when omitted.
    plane_positions : sequence of highdicom.PlanePositionSequence, optional
        Explicit plane positions (default: those of the source frames).
    slab : int, optional
        Slab number, named in the series description (``"T1 param map slab 2"``).

    Returns
    -------
    highdicom.pm.ParametricMap
        Ready for ``save_as``.

    Raises
    ------
    TypeError
        For wrong argument types (sources, values dtype, identity).
    ValueError
        For an unknown kind, a shape mismatch with the sources, infinite values, sources
        from several series, or sources without the geometry a map needs.
    """
    try:
        kind = MapKind(kind)
    except ValueError:
        allowed = ", ".join(k.value for k in MapKind)
        raise ValueError(f"unknown map kind {kind!r}; expected one of {allowed}") from None
    if not isinstance(identity, ResultIdentity):
        raise TypeError(f"identity must be a ResultIdentity, got {type(identity).__name__}")
    if isinstance(series_number, bool) or not isinstance(series_number, int | np.integer):
        raise TypeError(f"series_number must be an int, got {type(series_number).__name__}")
    if series_number < 1:
        raise ValueError(f"series_number must be positive, got {series_number}")
    sources, n_frames, rows, columns = prepare_sources(source_images, what="map")
    pixels = _prepare_values(values, (n_frames, rows, columns))
    style = MAP_STYLES[kind]

    mapping = hd.pm.RealWorldValueMapping(
        lut_label=style.lut_label,
        lut_explanation=style.lut_explanation,
        unit=style.unit,
        value_range=(float(pixels.min()), float(pixels.max())),
        slope=1.0,
        intercept=0.0,
        quantity_definition=style.quantity,
    )
    window = hd.VOILUTTransformation(
        window_center=style.window_center,
        window_width=style.window_width,
        voi_lut_function="LINEAR_EXACT",
    )
    # highdicom 0.28.2 splits a str window_explanation into characters: set it directly.
    window.WindowCenterWidthExplanation = style.window_explanation
    pm = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=pixels,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        **identity.device_arguments(),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_label=style.content_label,
        content_description=style.content_description,
        content_qualification=identity.content_qualification,
        plane_positions=plane_positions,
    )
    pm.BodyPartExamined = body_part_examined(sources[0])
    slab_text = "" if slab is None else f" slab {int(slab)}"
    pm.SeriesDescription = f"{identity.software_name} {style.series_description}{slab_text}"
    apply_identity(pm, identity)
    return pm
