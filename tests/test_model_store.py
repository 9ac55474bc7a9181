"""Normative model directories: exact round trip, content-hash versions, protocol checks."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from processing.mp2rage import MP2RAGEProtocol
from processing.normative import NormativeModel, build_normative_model
from service.pipeline.model_store import (
    ARRAYS_FILE,
    METADATA_FILE,
    ModelMetadata,
    ProtocolMismatch,
    check_protocol,
    compute_model_version,
    load_model,
    save_model,
)

PROTOCOL = MP2RAGEProtocol(
    tr_mp2rage_s=5.0,
    ti1_s=0.8,
    ti2_s=2.7,
    flip1_deg=4.0,
    flip2_deg=5.0,
    echo_spacing_s=0.0067,
    n_excitations=48,
)
CREATED = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)


def _model(seed: int = 0) -> NormativeModel:
    rng = np.random.default_rng(seed)
    shape = (4, 12, 12)
    cord = np.zeros(shape, dtype=bool)
    cord[:, 2:10, 2:10] = True
    controls = [1200.0 + 70.0 * rng.standard_normal(shape) for _ in range(6)]
    gm = np.zeros(shape, dtype=bool)
    gm[:, 5:7, 4:8] = True
    return build_normative_model(
        controls, [cord] * 6, tissue_maps={"gm": gm, "wm": cord & ~gm}, min_count=3
    )


def _metadata(**changes: object) -> ModelMetadata:
    fields: dict[str, object] = {
        "created_at": CREATED,
        "software_version": "0.1.0",
        "protocol": PROTOCOL,
        "protocol_name": "mp2rage_cord_0.3iso",
        "controls": tuple(f"1.2.826.0.1.3680043.10.543.{i}" for i in range(6)),
        "template_parameters": {"shape_uv": [64, 64], "uv_extent": 1.25},
        "z_bins_per_slab": 4,
        "smoothing_sigma_vox": 1.0,
        "shrinkage_n0": 5.0,
        "min_count": 3,
    }
    fields.update(changes)
    return ModelMetadata(**fields)  # type: ignore[arg-type]


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model = _model()
    saved = save_model(model, tmp_path / "model", _metadata())
    loaded, metadata = load_model(tmp_path / "model")
    for name in ("mean_ms", "sd_ms", "count"):
        original, restored = getattr(model, name), getattr(loaded, name)
        assert restored.dtype == original.dtype
        np.testing.assert_array_equal(restored, original)  # NaN == NaN here
    assert np.isnan(loaded.mean_ms).any()
    assert loaded.tissue_sd_ms == model.tissue_sd_ms
    assert metadata == saved
    assert metadata.model_version.startswith("nm-")
    assert metadata.n_controls == 6
    assert metadata.created_at == CREATED
    assert metadata.protocol == PROTOCOL


def test_metadata_file_is_readable_json_without_patient_names(tmp_path: Path) -> None:
    saved = save_model(_model(), tmp_path, _metadata())
    document = json.loads((tmp_path / METADATA_FILE).read_text())
    assert document["model_version"] == saved.model_version
    assert document["n_controls"] == 6
    assert document["protocol"]["ti1_s"] == 0.8
    assert document["protocol_name"] == "mp2rage_cord_0.3iso"
    assert document["software_version"] == "0.1.0"
    assert document["z_bins_per_slab"] == 4
    assert set(document["tissue_sd_ms"]) == {"all", "gm", "wm"}
    assert (tmp_path / ARRAYS_FILE).is_file()


def test_version_changes_with_data_controls_and_protocol_but_not_build_time() -> None:
    model = _model()
    base = compute_model_version(model, _metadata())
    later = _metadata(created_at=CREATED + timedelta(days=3))
    assert compute_model_version(model, later) == base
    assert compute_model_version(_model(seed=1), _metadata()) != base
    nudged = NormativeModel(
        np.where(model.valid, model.mean_ms + 0.001, np.nan),
        model.sd_ms,
        model.count,
        model.tissue_sd_ms,
    )
    assert compute_model_version(nudged, _metadata()) != base
    other_controls = _metadata(controls=tuple(f"key-{i}" for i in range(6)))
    assert compute_model_version(model, other_controls) != base
    other_protocol = _metadata(protocol=dataclasses.replace(PROTOCOL, ti1_s=0.9))
    assert compute_model_version(model, other_protocol) != base
    assert compute_model_version(model, _metadata(shrinkage_n0=2.0)) != base


def test_edited_files_are_detected_on_load(tmp_path: Path) -> None:
    save_model(_model(), tmp_path, _metadata())
    document = json.loads((tmp_path / METADATA_FILE).read_text())
    document["controls"][0] = "someone-else"
    (tmp_path / METADATA_FILE).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="does not match its version"):
        load_model(tmp_path)


def test_existing_model_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    first = save_model(_model(), tmp_path, _metadata())
    with pytest.raises(FileExistsError):
        save_model(_model(seed=1), tmp_path, _metadata())
    assert load_model(tmp_path)[1].model_version == first.model_version
    second = save_model(_model(seed=1), tmp_path, _metadata(), overwrite=True)
    assert load_model(tmp_path)[1].model_version == second.model_version != first.model_version


def test_save_rejects_inconsistent_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="content hash"):
        save_model(_model(), tmp_path, _metadata(model_version="nm-0000000000000000"))
    with pytest.raises(ValueError, match="lists 2"):
        save_model(_model(), tmp_path, _metadata(controls=("a", "b")))
    assert not (tmp_path / METADATA_FILE).exists()


def test_loading_an_empty_directory_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=METADATA_FILE):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"created_at": datetime(2024, 5, 17)}, "timezone-aware"),
        ({"controls": ()}, "at least one"),
        ({"controls": ("a", "a")}, "repeat"),
        ({"software_version": ""}, "software_version"),
        ({"template_parameters": {"f": object()}}, "JSON"),
        ({"min_count": 1}, "min_count"),
    ],
)
def test_metadata_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _metadata(**changes)


def test_metadata_keeps_a_non_utc_timezone() -> None:
    tz = timezone(timedelta(hours=2))
    data = _metadata(created_at=datetime(2024, 5, 17, 11, 30, tzinfo=tz)).to_json()
    assert ModelMetadata.from_json(data).created_at == CREATED


def test_same_protocol_passes_within_tolerance() -> None:
    check_protocol(_metadata(), dataclasses.replace(PROTOCOL, ti1_s=0.8004))
    # Efficiency is a lookup assumption, not an acquisition setting.
    check_protocol(_metadata(), dataclasses.replace(PROTOCOL, efficiency=0.9))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"ti1_s": 0.9}, "TI1 900 ms (exam) vs 800 ms (model)"),
        ({"ti2_s": 2.5}, "TI2 2500 ms (exam) vs 2700 ms (model)"),
        ({"tr_mp2rage_s": 6.0}, "TR_MP2RAGE 6000 ms (exam) vs 5000 ms (model)"),
        ({"flip1_deg": 5.0}, "flip angle 1 5 deg (exam) vs 4 deg (model)"),
        ({"flip2_deg": 6.0}, "flip angle 2 6 deg (exam) vs 5 deg (model)"),
        ({"echo_spacing_s": 0.0072}, "echo spacing 7.2 ms (exam) vs 6.7 ms (model)"),
        ({"n_excitations": 64}, "excitations per block 64 (exam) vs 48 (model)"),
        ({"n_before_centre": 10}, "before the k-space centre 10 (exam) vs 24 (model)"),
    ],
)
def test_protocol_mismatch_names_the_value(changes: dict[str, float], expected: str) -> None:
    metadata = _metadata(model_version="nm-abc")
    with pytest.raises(ProtocolMismatch) as info:
        check_protocol(metadata, dataclasses.replace(PROTOCOL, **changes))  # type: ignore[arg-type]
    assert expected in str(info.value)
    assert "nm-abc" in str(info.value)
    assert len(info.value.differences) == 1
    assert expected in info.value.differences[0]
    assert isinstance(info.value, ValueError)


def test_protocol_mismatch_lists_every_difference() -> None:
    other = dataclasses.replace(PROTOCOL, ti1_s=0.9, flip2_deg=7.0)
    with pytest.raises(ProtocolMismatch) as info:
        check_protocol(_metadata(), other)
    assert len(info.value.differences) == 2
    assert "TI1" in str(info.value) and "flip angle 2" in str(info.value)
