"""Single-frame MR Image Storage series of the phantom (one file per slice)."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import MRImageStorage

from service.phantom.dicom_common import ExamContext, SeriesSpec, common_dataset, decimal, save
from service.phantom.identity import phantom_uid

__all__ = ["write_legacy_series"]


def write_legacy_series(exam: ExamContext, series: SeriesSpec, folder: Path) -> list[Path]:
    """Write one MR Image Storage instance per slice of ``series`` into ``folder``.

    Returns
    -------
    list of Path
        Written files, in InstanceNumber order.
    """
    geometry = series.geometry
    preset = exam.preset
    n_slices, rows, cols = series.pixels.shape
    spacing = geometry.pixel_spacing_mm
    orientation = [*geometry.row_cosines, *geometry.column_cosines]
    normal = geometry.slice_step_mm / geometry.slice_mm
    paths = []
    for k in range(n_slices):
        ds = common_dataset(exam, series)
        ds.ImageType = list(series.image_type)
        ds.ScanningSequence = ["GR", "IR"] if series.has_inversion else "GR"
        ds.SequenceVariant = ["SP", "MP"]
        ds.ScanOptions = "IR" if series.has_inversion else ""
        ds.MRAcquisitionType = "3D"
        ds.SequenceName = preset.sequence_name
        ds.AngioFlag = "N"
        ds.SliceThickness = decimal(geometry.slice_mm)
        ds.RepetitionTime = decimal(preset.mp2rage.tr_mp2rage_s * 1000.0)
        ds.EchoTime = decimal(preset.echo_time_ms)
        if series.inversion_time_ms is not None:
            ds.InversionTime = decimal(series.inversion_time_ms)
        ds.NumberOfAverages = "1"
        ds.ImagingFrequency = "297.2"
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = "1"
        ds.MagneticFieldStrength = "6.98"
        ds.SpacingBetweenSlices = decimal(geometry.slice_mm)
        ds.EchoTrainLength = "1"
        ds.PercentSampling = "100"
        ds.PercentPhaseFieldOfView = "100"
        ds.PixelBandwidth = "240"
        ds.TransmitCoilName = "Tx_Nova"
        ds.AcquisitionMatrix = [0, rows, cols, 0]
        ds.InPlanePhaseEncodingDirection = "ROW"
        ds.FlipAngle = decimal(series.flip_angle_deg)
        ds.VariableFlipAngleFlag = "N"
        ds.PatientPosition = "HFS"
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [decimal(v) for v in geometry.position_mm(k)[:3]]
        ds.ImageOrientationPatient = [decimal(v) for v in orientation]
        ds.SliceLocation = decimal(float(geometry.position_mm(k)[:3] @ normal))
        ds.ImagesInAcquisition = n_slices
        ds.ImageComments = f"cordt1 phantom {series.component} slab {series.slab}"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [decimal(spacing[0]), decimal(spacing[1])]
        ds.WindowCenter = decimal(series.window[0])
        ds.WindowWidth = decimal(series.window[1])
        ds.SOPInstanceUID = phantom_uid(exam.seed, exam.exam_key, series.series_number, k + 1)
        path = folder / f"{k + 1:04d}.dcm"
        save(ds, MRImageStorage, series.pixels[k], path, exam.transfer_syntax)
        paths.append(path)
    return paths
