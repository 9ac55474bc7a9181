"""Single-frame MR Image Storage series of the phantom (one file per slice)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from service.phantom.dicom_common import ExamContext, SeriesSpec, common_dataset, decimal, save
from service.phantom.identity import phantom_uid

__all__ = ["write_legacy_series"]


def _sequence(exam: ExamContext, series: SeriesSpec, ds: Dataset) -> None:
    """Acquisition attributes: the MP2RAGE readout, or a multi-echo spoiled 2D GRE."""
    gre = series.gre
    if gre is None:
        ds.ScanningSequence = ["GR", "IR"] if series.has_inversion else "GR"
        ds.SequenceVariant = ["SP", "MP"]
        ds.ScanOptions = "IR" if series.has_inversion else ""
        ds.MRAcquisitionType = "3D"
        ds.SequenceName = exam.preset.sequence_name
        ds.RepetitionTime = decimal(exam.preset.mp2rage.tr_mp2rage_s * 1000.0)
        ds.EchoTrainLength = "1"
        return
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = gre.sequence_name
    ds.RepetitionTime = decimal(gre.repetition_time_ms)
    ds.EchoTrainLength = str(len(gre.echo_times_ms))


def write_legacy_series(exam: ExamContext, series: SeriesSpec, folder: Path) -> list[Path]:
    """Write one MR Image Storage instance per slice (and echo) of ``series`` into ``folder``.

    A multi-echo GRE series holds one instance per echo per slice (EchoTime, EchoNumbers;
    InstanceNumber runs over the slices of echo 1, then echo 2, ...).

    Returns
    -------
    list of Path
        Written files, in InstanceNumber order.
    """
    geometry = series.geometry
    preset = exam.preset
    stack = series.image_stack
    n_images, n_slices, rows, cols = stack.shape
    echo_times = (
        series.gre.image_echo_times_ms() if series.gre is not None else (preset.echo_time_ms,)
    )
    spacing = geometry.pixel_spacing_mm
    orientation = [*geometry.row_cosines, *geometry.column_cosines]
    normal = geometry.slice_step_mm / geometry.slice_mm
    paths = []
    for e in range(n_images):
        for k in range(n_slices):
            number = e * n_slices + k + 1
            ds = common_dataset(exam, series)
            ds.ImageType = list(series.image_type)
            _sequence(exam, series, ds)
            ds.AngioFlag = "N"
            ds.SliceThickness = decimal(geometry.slice_mm)
            ds.EchoTime = decimal(echo_times[e])
            if series.inversion_time_ms is not None:
                ds.InversionTime = decimal(series.inversion_time_ms)
            ds.NumberOfAverages = "1"
            ds.ImagingFrequency = "297.2"
            ds.ImagedNucleus = "1H"
            ds.EchoNumbers = str(e + 1)
            ds.MagneticFieldStrength = "6.98"
            ds.SpacingBetweenSlices = decimal(geometry.slice_mm)
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
            ds.InstanceNumber = number
            ds.ImagePositionPatient = [decimal(v) for v in geometry.position_mm(k)[:3]]
            ds.ImageOrientationPatient = [decimal(v) for v in orientation]
            ds.SliceLocation = decimal(float(geometry.position_mm(k)[:3] @ normal))
            ds.ImagesInAcquisition = n_slices * n_images
            echo = f" echo {e + 1}" if n_images > 1 else ""
            ds.ImageComments = f"cordt1 phantom {series.component} {series.location}{echo}"
            ds.Rows = rows
            ds.Columns = cols
            ds.PixelSpacing = [decimal(spacing[0]), decimal(spacing[1])]
            ds.WindowCenter = decimal(series.window[0])
            ds.WindowWidth = decimal(series.window[1])
            ds.SOPInstanceUID = phantom_uid(exam.seed, exam.exam_key, series.series_number, number)
            path = folder / f"{number:04d}.dcm"
            save(ds, MRImageStorage, stack[e, k], path, exam.transfer_syntax)
            paths.append(path)
    return paths
