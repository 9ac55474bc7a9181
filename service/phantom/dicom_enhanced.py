"""Enhanced MR Image Storage series of the phantom (one multi-frame instance per series)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage

from service.phantom.dicom_common import ExamContext, SeriesSpec, common_dataset, decimal, save
from service.phantom.identity import phantom_uid

__all__ = ["write_enhanced_series"]

#: Value 3 of the enhanced ImageType / FrameType per component (Image Flavor).
_FLAVOR = "VOLUME"


def _item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _frame_type(series: SeriesSpec) -> list[str]:
    """Enhanced ImageType: value 3 flavour, value 4 derived pixel contrast."""
    first, second = series.image_type[0], series.image_type[1]
    contrast = {
        "INV1": "NONE",
        "INV2": "NONE",
        "UNI": "UNI",
        "T1MAP": "T1 MAP",
        "T2STAR": "NONE",
    }.get(series.component, "B1 MAP")
    return [first, second, _FLAVOR, contrast]


def _contrast(series: SeriesSpec) -> str:
    """AcquisitionContrast: MP2RAGE images are T1, the GRE T2*; the B1 map is neither."""
    if series.gre is not None:
        return "T2_STAR"
    return "UNKNOWN" if series.component == "B1MAP" else "T1"


def _multi_echo(series: SeriesSpec) -> bool:
    """True when frames differ in echo time (per-frame MR Echo, echo dimension)."""
    return series.gre is not None and not series.gre.combined


def _timing(exam: ExamContext, series: SeriesSpec) -> tuple[float, int, float]:
    """Repetition time (ms), echoes per excitation and the echo time of a single-echo series."""
    if series.gre is None:
        return exam.preset.mp2rage.tr_mp2rage_s * 1000.0, 1, float(exam.preset.echo_time_ms)
    gre = series.gre
    return gre.repetition_time_ms, len(gre.echo_times_ms), gre.image_echo_times_ms()[0]


def _shared_group(exam: ExamContext, series: SeriesSpec) -> Dataset:
    g = series.geometry
    n_slices, rows, cols = series.image_stack.shape[1:]
    repetition_ms, n_echoes, echo_ms = _timing(exam, series)
    spacing = g.pixel_spacing_mm
    frame_type = _frame_type(series)
    modifier = _item(
        InversionRecovery="YES" if series.has_inversion else "NO",
        FlowCompensation="NONE",
        T2Preparation="NO",
        SpatialPresaturation="NONE",
        PartialFourier="NO",
        ParallelAcquisition="NO",
        SpectrallySelectedExcitation="NONE",
    )
    if series.has_inversion:
        modifier.InversionTimes = [float(series.inversion_time_ms or 0.0)]
    group = _item(
        FrameAnatomySequence=Sequence(
            [
                _item(
                    AnatomicRegionSequence=Sequence(
                        [
                            _item(
                                CodeValue="122494005",
                                CodingSchemeDesignator="SCT",
                                CodeMeaning="Cervical spine",
                            )
                        ]
                    ),
                    FrameLaterality="U",
                )
            ]
        ),
        PixelMeasuresSequence=Sequence(
            [
                _item(
                    PixelSpacing=[decimal(spacing[0]), decimal(spacing[1])],
                    SliceThickness=decimal(g.slice_mm),
                    SpacingBetweenSlices=decimal(g.slice_mm),
                )
            ]
        ),
        PlaneOrientationSequence=Sequence(
            [
                _item(
                    ImageOrientationPatient=[
                        decimal(v) for v in [*g.row_cosines, *g.column_cosines]
                    ]
                )
            ]
        ),
        MRImageFrameTypeSequence=Sequence(
            [
                _item(
                    FrameType=frame_type,
                    PixelPresentation="MONOCHROME",
                    VolumetricProperties="VOLUME",
                    VolumeBasedCalculationTechnique="NONE",
                    ComplexImageComponent="MAGNITUDE",
                    AcquisitionContrast=_contrast(series),
                )
            ]
        ),
        MRTimingAndRelatedParametersSequence=Sequence(
            [
                _item(
                    RepetitionTime=float(repetition_ms),
                    FlipAngle=float(series.flip_angle_deg),
                    EchoTrainLength=n_echoes,
                    RFEchoTrainLength=0,
                    GradientEchoTrainLength=n_echoes,
                    SpecificAbsorptionRateSequence=Sequence(
                        [
                            _item(
                                SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                SpecificAbsorptionRateValue=0.4,
                            )
                        ]
                    ),
                    GradientOutputType="DB_DT",
                    GradientOutput=0.0,
                    OperatingModeSequence=Sequence(
                        [_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")]
                    ),
                )
            ]
        ),
        MRFOVGeometrySequence=Sequence(
            [
                _item(
                    InPlanePhaseEncodingDirection="ROW",
                    MRAcquisitionFrequencyEncodingSteps=rows,
                    MRAcquisitionPhaseEncodingStepsInPlane=cols,
                    MRAcquisitionPhaseEncodingStepsOutOfPlane=n_slices,
                    PercentSampling=100.0,
                    PercentPhaseFieldOfView=100.0,
                )
            ]
        ),
        MRModifierSequence=Sequence([modifier]),
        MRImagingModifierSequence=Sequence(
            [
                _item(
                    PixelBandwidth=240.0,
                    MagnetizationTransfer="NONE",
                    BloodSignalNulling="NO",
                    Tagging="NONE",
                    TransmitterFrequency=297.2,
                )
            ]
        ),
        MRReceiveCoilSequence=Sequence(
            [
                _item(
                    ReceiveCoilName="C-spine 7T",
                    ReceiveCoilManufacturerName="",
                    ReceiveCoilType="MULTICOIL",
                    QuadratureReceiveCoil="NO",
                    MultiCoilDefinitionSequence=Sequence(
                        [_item(MultiCoilElementName="CS1-8", MultiCoilElementUsed="YES")]
                    ),
                )
            ]
        ),
        MRTransmitCoilSequence=Sequence(
            [
                _item(
                    TransmitCoilName="Tx_Nova",
                    TransmitCoilManufacturerName="",
                    TransmitCoilType="VOLUME",
                )
            ]
        ),
        MRAveragesSequence=Sequence([_item(NumberOfAverages=1.0)]),
        PixelValueTransformationSequence=Sequence(
            [_item(RescaleIntercept="0", RescaleSlope="1", RescaleType="US")]
        ),
        FrameVOILUTSequence=Sequence(
            [
                _item(
                    WindowCenter=decimal(series.window[0]),
                    WindowWidth=decimal(series.window[1]),
                )
            ]
        ),
    )
    if not _multi_echo(series):
        group.MREchoSequence = Sequence([_item(EffectiveEchoTime=echo_ms)])
    return group


def _per_frame_group(exam: ExamContext, series: SeriesSpec, k: int, echo: int) -> Dataset:
    datetime = f"{exam.study_date}{exam.study_time}"
    index = [1, k + 1, echo + 1] if _multi_echo(series) else [1, k + 1]
    repetition_ms = _timing(exam, series)[0]
    group = _item(
        FrameContentSequence=Sequence(
            [
                _item(
                    FrameAcquisitionDateTime=datetime,
                    FrameReferenceDateTime=datetime,
                    FrameAcquisitionDuration=float(repetition_ms),
                    StackID="1",
                    InStackPositionNumber=k + 1,
                    DimensionIndexValues=index,
                )
            ]
        ),
        PlanePositionSequence=Sequence(
            [_item(ImagePositionPatient=[decimal(v) for v in series.geometry.position_mm(k)[:3]])]
        ),
    )
    if _multi_echo(series) and series.gre is not None:
        echo_ms = series.gre.image_echo_times_ms()[echo]
        group.MREchoSequence = Sequence([_item(EffectiveEchoTime=float(echo_ms))])
    return group


def write_enhanced_series(exam: ExamContext, series: SeriesSpec, folder: Path) -> list[Path]:
    """Write ``series`` as one Enhanced MR Image Storage instance into ``folder``.

    A multi-echo GRE series has one frame per echo per slice (echo-major order: all slices
    of echo 1, then echo 2, ...), each with its EffectiveEchoTime, and a third dimension
    index over the echo time.
    """
    preset = exam.preset
    stack = series.image_stack
    n_images, n_slices, rows, cols = stack.shape
    n_frames = n_images * n_slices
    ds = common_dataset(exam, series)
    for keyword in ("SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime"):
        delattr(ds, keyword)
    ds.ImageType = _frame_type(series)
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = f"{exam.study_date}{exam.study_time}"
    ds.AcquisitionDuration = 0.0
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = "6.98"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = f"cordt1 phantom {series.component} {series.location}"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = _contrast(series)
    if ds.ImageType[0] == "ORIGINAL":
        # MR Pulse Sequence module: only for original images.
        sequence_name = series.gre.sequence_name if series.gre else preset.sequence_name
        ds.PulseSequenceName = sequence_name.lstrip("*")
        ds.MRAcquisitionType = "2D" if series.gre else "3D"
        ds.EchoPulseSequence = "GRADIENT"
        ds.MultiPlanarExcitation = "NO"
        ds.PhaseContrast = "NO"
        ds.TimeOfFlightContrast = "NO"
        ds.SteadyStatePulseSequence = "NONE"
        ds.EchoPlanarPulseSequence = "NO"
        ds.SaturationRecovery = "NO"
        ds.SpectrallySelectedSuppression = "NONE"
        ds.OversamplingPhase = "NONE"
        ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
        ds.RectilinearPhaseEncodeReordering = "LINEAR"
        ds.SegmentedKSpaceTraversal = "PARTIAL"
        if series.gre is None:
            ds.CoverageOfKSpace = "FULL"  # 3D acquisitions only
        ds.NumberOfKSpaceTrajectories = 1
    ds.AcquisitionContextSequence = Sequence()
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n_frames
    ds.Rows = rows
    ds.Columns = cols
    organization_uid = phantom_uid(exam.seed, exam.exam_key, series.series_number, "dim")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=organization_uid)])
    if not _multi_echo(series):
        ds.DimensionOrganizationType = "3D"
    dimensions = Sequence(
        [
            _item(
                DimensionOrganizationUID=organization_uid,
                DimensionIndexPointer=0x00209056,  # StackID
                FunctionalGroupPointer=0x00209111,  # FrameContentSequence
                DimensionDescriptionLabel="Stack ID",
            ),
            _item(
                DimensionOrganizationUID=organization_uid,
                DimensionIndexPointer=0x00209057,  # InStackPositionNumber
                FunctionalGroupPointer=0x00209111,
                DimensionDescriptionLabel="In-Stack Position Number",
            ),
        ]
    )
    if _multi_echo(series):
        dimensions.append(
            _item(
                DimensionOrganizationUID=organization_uid,
                DimensionIndexPointer=0x00189082,  # EffectiveEchoTime
                FunctionalGroupPointer=0x00189114,  # MREchoSequence
                DimensionDescriptionLabel="Effective Echo Time",
            )
        )
    ds.DimensionIndexSequence = dimensions
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_group(exam, series)])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [_per_frame_group(exam, series, k, e) for e in range(n_images) for k in range(n_slices)]
    )
    ds.SOPInstanceUID = phantom_uid(exam.seed, exam.exam_key, series.series_number, 1)
    path = folder / "0001.dcm"
    frames = np.asarray(stack).reshape(n_frames, rows, cols)
    save(ds, EnhancedMRImageStorage, frames, path, exam.transfer_syntax)
    return [path]
