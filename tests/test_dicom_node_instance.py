"""Header facts, own-result markers, component classification, status texts, validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_node.components import Component, classify, classify_series, is_multi_echo_gre
from dicom_node.instance import OwnResultMarkers, PseudonymKey, patient_key, read_instance_info
from dicom_node.status import StoreStatus, describe, is_failure, is_warning
from dicom_node.validation import check_ae_title
from tests.test_dicom_node_factories import make_mr

MARKERS = OwnResultMarkers(manufacturer="cordt1", software_name="cordt1", private_creator="CORDT1")
SITE = PseudonymKey(b"site-secret-0123456789")


def _info(ds: Dataset, tmp_path: Path, markers: OwnResultMarkers = MARKERS):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"12345")
    return read_instance_info(
        ds,
        path=path,
        calling_ae=" SCANNER ",
        received_at=10.0,
        own_markers=markers,
        pseudonyms=SITE,
    )


def test_read_instance_info_takes_header_fields(tmp_path: Path) -> None:
    ds = make_mr(component="UNI", images_in_acquisition=44)
    info = _info(ds, tmp_path)
    assert info.study_uid == ds.StudyInstanceUID
    assert info.series_uid == ds.SeriesInstanceUID
    assert info.sop_instance_uid == ds.SOPInstanceUID
    assert info.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert info.component is Component.UNI
    assert (info.modality, info.series_number, info.acquisition_number) == ("MR", 5, 1)
    assert info.images_in_acquisition == 44
    assert info.number_of_frames is None
    assert info.frame_of_reference_uid == "1.2.3.4.5"
    assert info.calling_ae == "SCANNER"
    assert info.size_bytes == 5
    assert info.is_own_result is False


def test_patient_key_is_keyed_never_the_raw_id_nor_a_bare_hash(tmp_path: Path) -> None:
    info = _info(make_mr(patient_id="PAT-0001"), tmp_path)
    assert info.patient_key == patient_key("HOSP", "PAT-0001", SITE)
    assert len(info.patient_key) == 16
    assert "PAT" not in repr(info) and "Doe" not in repr(info)
    assert SITE.patient_key("HOSP", "1") != SITE.patient_key("HOSP1", "")
    assert SITE.patient_key("A", "1") != SITE.patient_key("B", "1")
    # Someone without the secret cannot recompute the key by hashing candidate IDs.
    for raw in ("HOSP\\PAT-0001", "PAT-0001", "HOSPPAT-0001"):
        assert hashlib.sha256(raw.encode()).hexdigest()[:16] != info.patient_key


def test_patient_key_same_secret_same_key_other_secret_other_key() -> None:
    again = PseudonymKey(b"site-secret-0123456789")
    other = PseudonymKey(b"another-site-secret-987")
    assert again.patient_key("HOSP", "PAT-0001") == SITE.patient_key("HOSP", "PAT-0001")
    assert other.patient_key("HOSP", "PAT-0001") != SITE.patient_key("HOSP", "PAT-0001")


def test_pseudonym_key_refuses_a_short_secret_and_hides_it() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PseudonymKey(b"short")
    assert "site-secret" not in repr(SITE)
    with pytest.raises(TypeError, match="PseudonymKey"):
        patient_key("HOSP", "1", b"site-secret-0123456789")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("Manufacturer", "cordt1"),
        ("Manufacturer", " CORDT1 "),
        ("SoftwareVersions", ["cordt1 0.1.0", "numpy 2"]),
        ("ManufacturerModelName", "cordt1"),
    ],
)
def test_own_results_are_recognised_by_markers(
    tmp_path: Path, keyword: str, value: object
) -> None:
    ds = make_mr()
    setattr(ds, keyword, value)
    assert _info(ds, tmp_path).is_own_result is True


def test_own_results_are_recognised_by_private_creator(tmp_path: Path) -> None:
    ds = make_mr()
    block = ds.private_block(0x0011, "CORDT1", create=True)
    block.add_new(0x01, "LO", "1.0")
    assert _info(ds, tmp_path).is_own_result is True


def test_scanner_data_is_not_own_result(tmp_path: Path) -> None:
    ds = make_mr()
    ds.SoftwareVersions = "syngo MR E12"
    ds.ManufacturerModelName = "cordt1000"  # similar, but not ours
    assert _info(ds, tmp_path).is_own_result is False


def test_markers_need_at_least_one_rule() -> None:
    with pytest.raises(ValueError, match="at least one"):
        OwnResultMarkers()
    with pytest.raises(ValueError, match="non-empty"):
        OwnResultMarkers(manufacturer=" ")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_or_hostile_uid_is_a_clear_error(tmp_path: Path, keyword: str) -> None:
    ds = make_mr()
    setattr(ds, keyword, "1.2/../../etc")
    with pytest.raises(ValueError, match=keyword):
        _info(ds, tmp_path)
    delattr(ds, keyword)
    with pytest.raises(ValueError, match=keyword):
        _info(ds, tmp_path)


def test_missing_transfer_syntax_is_a_clear_error(tmp_path: Path) -> None:
    ds = make_mr()
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(ValueError, match="TransferSyntaxUID"):
        _info(ds, tmp_path)


# --------------------------------------------------------------------- classify()
def _header(image_type: list[str] | None, description: str = "", modality: str = "MR") -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    if image_type is not None:
        ds.ImageType = image_type
    ds.SeriesDescription = description
    return ds


@pytest.mark.parametrize(
    ("image_type", "description", "expected"),
    [
        # Siemens VE11/VB17 product MP2RAGE: INV1/INV2 are plain magnitude, named by description
        (["ORIGINAL", "PRIMARY", "M", "ND", "NORM"], "mp2rage_cord_INV1", Component.INV1),
        (["ORIGINAL", "PRIMARY", "M", "ND", "NORM"], "mp2rage_cord_INV2", Component.INV2),
        (["ORIGINAL", "PRIMARY", "M", "ND"], "MP2RAGE 0.3mm INV2", Component.INV2),
        (["DERIVED", "PRIMARY", "M", "ND", "UNI"], "mp2rage_cord_UNI_Images", Component.UNI),
        # UNI recognised by ImageType although the site renamed the series
        (["DERIVED", "PRIMARY", "M", "ND", "UNI"], "cord slab 1", Component.UNI),
        # T1 maps carry "T1 MAP"; some also keep the UNI token: the map wins
        (["DERIVED", "PRIMARY", "T1 MAP", "ND", "UNI"], "mp2rage_T1_Images", Component.T1MAP),
        (["DERIVED", "PRIMARY", "T1 MAP", "DIS3D", "MFSPLIT"], "x", Component.T1MAP),
        # description-only T1 map (XA split ImageType), and UNI-DEN
        (["DERIVED", "PRIMARY", "T1", "T1", "MAP"], "cord_MP2RAGE_T1_Images", Component.T1MAP),
        (["DERIVED", "PRIMARY", "M", "ND"], "mp2rage_UNI-DEN", Component.UNI),
        # phase images of an inversion
        (["ORIGINAL", "PRIMARY", "P", "ND"], "mp2rage_cord_INV1_PHS", Component.PHASE),
        (["ORIGINAL", "PRIMARY", "M", "ND"], "t2star_me_gre_cord", Component.T2STAR),
        (["ORIGINAL", "PRIMARY", "M", "ND"], "localizer", Component.OTHER),
        (None, "", Component.OTHER),
    ],
)
def test_classify_realistic_siemens_headers(
    image_type: list[str] | None, description: str, expected: Component
) -> None:
    assert classify(_header(image_type, description)) is expected


def test_classify_seg_by_modality() -> None:
    assert classify(_header(["DERIVED", "PRIMARY"], "lesions", modality="SEG")) is Component.SEG


def _gre(description: str = "cord_axial", **values: object) -> Dataset:
    ds = _header(["ORIGINAL", "PRIMARY", "M", "ND"], description)
    ds.ScanningSequence = "GR"
    ds.EchoTime = "4.5"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"EchoNumbers": "3"}, Component.T2STAR),  # a later echo of a multi-echo series
        ({"EchoTrainLength": "5"}, Component.T2STAR),
        ({"EchoNumbers": "1", "EchoTrainLength": "1"}, Component.OTHER),  # single echo
        # an inversion makes it an MP2RAGE-like series, never T2*
        ({"EchoNumbers": "2", "ScanningSequence": ["GR", "IR"]}, Component.OTHER),
        ({"EchoNumbers": "2", "InversionTime": "800"}, Component.OTHER),
        ({"EchoNumbers": "2", "ScanningSequence": "SE"}, Component.OTHER),  # spin echo
    ],
)
def test_classify_recognises_a_renamed_multi_echo_gradient_echo(
    values: dict[str, object], expected: Component
) -> None:
    assert classify(_gre(**values)) is expected


def test_description_and_image_type_still_win_over_the_echo_rule() -> None:
    assert classify(_gre("mp2rage_cord_INV2", EchoNumbers="2")) is Component.INV2
    uni = _gre(EchoNumbers="2")
    uni.ImageType = ["DERIVED", "PRIMARY", "M", "ND", "UNI"]
    assert classify(uni) is Component.UNI
    assert classify(_gre("gre_field_mapping", EchoNumbers="2")) is Component.OTHER


def test_first_echo_of_a_legacy_series_is_t2star_with_its_siblings() -> None:
    first, second = _gre(EchoNumbers="1"), _gre(EchoNumbers="1", EchoTime="9.0")
    assert classify(first) is Component.OTHER  # alone it looks single-echo
    assert classify_series([first, second]) is Component.T2STAR  # two echo times
    assert classify_series([first, _gre(EchoNumbers="1")]) is Component.OTHER


def test_enhanced_mr_echoes_are_read_from_the_frames() -> None:
    ds = _header(["ORIGINAL", "PRIMARY", "M", "NONE"], "cord_axial")
    ds.EchoPulseSequence = "GRADIENT"
    frames = []
    for echo_ms in (3.0, 8.0, 13.0):
        echo, frame = Dataset(), Dataset()
        echo.EffectiveEchoTime = echo_ms
        frame.MREchoSequence = [echo]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    assert is_multi_echo_gre([ds])
    assert classify(ds) is Component.T2STAR
    modifier, shared = Dataset(), Dataset()
    modifier.InversionRecovery = "YES"
    shared.MRModifierSequence = [modifier]
    ds.SharedFunctionalGroupsSequence = [shared]
    assert classify(ds) is Component.OTHER


# --------------------------------------------------------------------- status and validation
def test_status_texts_and_categories() -> None:
    assert describe(StoreStatus.OUT_OF_RESOURCES) == "0xA700 failure: out of resources"
    assert describe(0xA7FE).endswith("out of resources")
    assert describe(0xC123).endswith("cannot understand")
    assert is_warning(0xB000) and not is_failure(0xB000)
    assert not is_failure(StoreStatus.SUCCESS)
    assert all(is_failure(code) for code in StoreStatus if code != StoreStatus.SUCCESS)


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "empty"), ("   ", "empty"), ("A" * 17, "longer than 16"), ("A\\B", "backslash")],
)
def test_bad_ae_titles_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_ae_title(value)
