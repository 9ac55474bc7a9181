"""Follow-up comparison of two exams (processing/followup.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from processing.followup import compare
from processing.lesions import characterise
from tests.test_lesions import load_exam, phantom_cohort


def lesion(lesion_id: int, volume_mm3: float, centre: list[float]) -> dict[str, object]:
    return {"id": lesion_id, "volume_mm3": volume_mm3, "centre": centre}


def regions(abnormal_percent: float, mean_t1_ms: float = 1250.0) -> dict[str, dict]:
    return {
        "cord": {"abnormal_percent": abnormal_percent, "mean_t1_ms": mean_t1_ms, "mean_z": 0.5},
        "wm": {"abnormal_percent": 8.0, "mean_t1_ms": 1200.0, "mean_z": None},
    }


def test_lesions_are_paired_and_classified() -> None:
    prior = {
        "lesions": [
            lesion(1, 20.0, [0.0, 0.0, 0.0]),  # grows +60 %: enlarged
            lesion(2, 30.0, [5.0, 5.0, -20.0]),  # +10 %: stable
            lesion(3, 40.0, [-4.0, 6.0, -40.0]),  # halves: shrunk
            lesion(4, 12.0, [2.0, 9.0, -60.0]),  # gone: resolved
        ]
    }
    current = {
        "lesions": [
            lesion(11, 32.0, [0.4, -0.3, 1.8]),
            lesion(12, 33.0, [5.2, 5.0, -21.0]),
            lesion(13, 20.0, [-4.0, 6.5, -39.0]),
            lesion(14, 15.0, [0.0, 8.0, -80.0]),  # nothing near it before: new
        ]
    }
    result = compare(prior, current)
    assert result.ids("enlarged") == [11]
    assert result.ids("stable") == [12]
    assert result.ids("shrunk") == [13]
    assert result.ids("new") == [14]
    assert result.ids("resolved") == [4]
    assert result.trend == "worse"
    [enlarged] = [c for c in result.lesions if c.status == "enlarged"]
    assert enlarged.prior_id == 1
    assert enlarged.volume_change_percent == pytest.approx(60.0)


def test_small_absolute_growth_of_a_tiny_lesion_is_not_enlargement() -> None:
    prior = {"lesions": [lesion(1, 4.0, [0.0, 0.0, 0.0])]}
    current = {"lesions": [lesion(1, 6.0, [0.0, 0.0, 0.0])]}  # +50 % but only 2 mm^3
    assert compare(prior, current).ids("stable") == [1]
    assert compare(prior, current, min_change_mm3=1.0).ids("enlarged") == [1]


def test_assignment_is_one_to_one_and_respects_the_distance_limit() -> None:
    prior = {"lesions": [lesion(1, 20.0, [0, 0, 0]), lesion(2, 20.0, [0, 0, 6.0])]}
    current = {"lesions": [lesion(7, 20.0, [0, 0, 4.0]), lesion(8, 20.0, [0, 0, 8.5])]}
    result = compare(prior, current)
    pairs = {(c.prior_id, c.current_id) for c in result.lesions if c.status == "stable"}
    assert pairs == {(1, 7), (2, 8)}  # the globally best pairing, not greedy (2, 7)
    far = compare(prior, current, max_match_distance=1.0)
    assert far.ids("new") == [7, 8] and far.ids("resolved") == [1, 2]


def test_template_coordinates_with_axis_scale_never_match_across_slabs() -> None:
    # (slab, s, u, v): s spans a 48 mm slab, u/v span half the cord width/depth
    scale = [1000.0, 48.0, 6.0, 4.0]
    prior = {"lesions": [lesion(1, 20.0, [1, 0.95, 0.1, 0.6])]}
    current = {"lesions": [lesion(1, 21.0, [2, 0.02, 0.1, 0.6])]}  # next slab, near in z
    result = compare(prior, current, axis_scale=scale)
    assert (result.ids("new"), result.ids("resolved")) == ([1], [1])
    same = {"lesions": [lesion(5, 21.0, [1, 0.97, 0.15, 0.55])]}
    assert compare(prior, same, axis_scale=scale).ids("stable") == [5]


@pytest.mark.parametrize(
    ("prior_abnormal", "current_abnormal", "lesion_change", "trend"),
    [
        (12.0, 13.5, 0.0, "stable"),  # within the 5-point margin
        (12.0, 19.0, 0.0, "worse"),  # diffuse damage alone
        (20.0, 12.0, 0.0, "better"),
        (12.0, 12.0, -15.0, "better"),  # lesion shrank, tissue unchanged
        (20.0, 12.0, +15.0, "worse"),  # an enlarged lesion outweighs diffuse improvement
    ],
)
def test_overall_trend_rule(
    prior_abnormal: float, current_abnormal: float, lesion_change: float, trend: str
) -> None:
    prior = {"regions": regions(prior_abnormal), "lesions": [lesion(1, 30.0, [0, 0, 0])]}
    current = {
        "regions": regions(current_abnormal),
        "lesions": [lesion(1, 30.0 + lesion_change, [0, 0, 1])],
    }
    result = compare(prior, current)
    assert result.trend == trend
    assert result.reasons


def test_region_changes_and_json_summary() -> None:
    prior = {"regions": regions(10.0, 1250.0), "lesions": []}
    current = {"regions": {**regions(16.0, 1290.0), "gm": {"abnormal_percent": 3.0}}}
    result = compare(prior, current)
    assert set(result.regions) == {"cord", "wm"}  # only regions of both exams
    cord = result.regions["cord"]
    assert cord.delta_abnormal_percent == pytest.approx(6.0)
    assert cord.delta_mean_t1_ms == pytest.approx(40.0)
    assert cord.delta_mean_z == pytest.approx(0.0)
    assert result.regions["wm"].delta_mean_z is None
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["trend"] == "worse"
    assert payload["regions"]["cord"]["delta_abnormal_percent"] == pytest.approx(6.0)
    assert payload["lesions"]["new"] == []
    missing = compare({"lesions": []}, {"lesions": []})
    assert missing.trend == "stable"
    assert any("no abnormal share" in reason for reason in missing.reasons)


def test_invalid_inputs_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="lacks"):
        compare({"lesions": [{"id": 1, "volume_mm3": 3.0}]}, {})
    with pytest.raises(ValueError, match="unique"):
        compare({"lesions": [lesion(1, 3.0, [0]), lesion(1, 4.0, [1])]}, {})
    with pytest.raises(ValueError, match="axis_scale"):
        compare({"lesions": [lesion(1, 3.0, [0, 0])]}, {}, axis_scale=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="dimensions"):
        compare({"lesions": [lesion(1, 3.0, [0, 0])]}, {"lesions": [lesion(1, 3.0, [0, 0, 0])]})
    with pytest.raises(ValueError, match="mapping"):
        compare([], {})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- phantom cohort


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom_cohort(tmp_path_factory)  # shared with test_lesions: generated once


def exam_summary(exam_dir: Path) -> tuple[dict, dict[str, object]]:
    """truth.json and a compare() input from the truth masks (LPS centres, cord region)."""
    truth, slabs = load_exam(exam_dir)
    lesions = []
    abnormal, voxels, t1_sum = 0, 0, 0.0
    for v in slabs:
        lesions += characterise(
            v["lesions"], v["t1_true_ms"], gm=v["gm"], wm=v["wm"], cord=v["cord"],
            affine_lps=v["affine"],
        )  # fmt: skip
        mean = np.where(v["gm"], 1310.0, 1190.0)
        z = (v["t1_true_ms"] - mean) / 80.0
        abnormal += int(np.count_nonzero(v["cord"] & (z > 1.96)))
        voxels += int(np.count_nonzero(v["cord"]))
        t1_sum += float(v["t1_true_ms"][v["cord"]].sum())
    cord = {"abnormal_percent": 100.0 * abnormal / voxels, "mean_t1_ms": t1_sum / voxels}
    return truth, {"regions": {"cord": cord}, "lesions": lesions}


@pytest.mark.slow
def test_compare_finds_the_phantom_new_and_enlarged_lesions(cohort: Path) -> None:
    patients = sorted(cohort.glob("patient-*"))
    assert patients
    changed = 0
    for patient in patients:
        _, baseline = exam_summary(patient / "exam-1")
        truth, follow_up = exam_summary(patient / "exam-2")
        result = compare(baseline, follow_up)
        expected_new = sorted(truth["follow_up"]["new_lesion_ids"])
        expected_enlarged = sorted(truth["follow_up"]["enlarged_lesion_ids"])
        assert result.ids("new") == expected_new
        assert result.ids("enlarged") == expected_enlarged
        assert result.ids("resolved") == []
        # the phantom keeps lesion ids: every other lesion is paired with itself
        for change in result.lesions:
            if change.status in ("stable", "shrunk", "enlarged"):
                assert change.prior_id == change.current_id
        assert result.trend == "worse"
        changed += len(expected_new) + len(expected_enlarged)
        assert set(result.to_dict()["lesions"]) >= {"new", "enlarged", "stable"}
    assert changed >= 2


# ---- which earlier exam a new one is compared with (service.pipeline.history.choose_prior) ------


def _exam_summary(date: str, time: str = "", tag: str = "") -> dict:
    return {"exam": {"study_date": date, "study_time": time, "study_instance_uid": tag}}


def test_the_prior_is_the_latest_exam_taken_before_this_one() -> None:
    from service.pipeline.history import choose_prior

    jan, mar, may = (_exam_summary(d, tag=d) for d in ("20260105", "20260310", "20260512"))
    # processed in any order: the prior of an April exam is March, never May
    assert choose_prior([may, jan, mar], ("20260415", "")) is mar
    # an archive exam older than all others has no prior, even though newer ones are done
    assert choose_prior([may, mar], ("20251201", "")) is None
    # the same day: the study time decides
    morning, noon = _exam_summary("20260310", "0800"), _exam_summary("20260310", "1200")
    assert choose_prior([noon, morning], ("20260310", "1000")) is morning


def test_without_dates_the_last_processed_exam_is_the_prior() -> None:
    from service.pipeline.history import choose_prior

    first, second = _exam_summary("", tag="a"), _exam_summary("", tag="b")
    assert choose_prior([first, second], ("20260415", "")) is second
    dated = _exam_summary("20260101")
    assert choose_prior([dated, first], ("", "")) is dated  # known dates rank above unknown
    assert choose_prior([], ("20260415", "")) is None
