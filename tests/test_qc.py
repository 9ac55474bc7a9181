"""QC verdicts for each rule, and the SNR estimate on synthetic Rician images."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest

import processing.qc as qc_module
from processing.qc import QcThresholds, QcVerdict, assess, estimate_snr

N_SLICES = 10


def _good(**changes: Any) -> dict[str, Any]:
    """Inputs of a clean exam, with some replaced."""
    inputs: dict[str, Any] = {
        "snr": 35.0,
        "outside_lookup_fraction": 0.001,
        "cord_area_mm2_per_slice": np.full(N_SLICES, 80.0),
        "cord_found_per_slice": np.ones(N_SLICES, dtype=bool),
        "centre_shift_mm_per_slice": np.full(N_SLICES - 1, 0.5),
        "template_fit": 0.98,
        "protocol_matches_model": True,
        "b1_corrected": True,
    }
    inputs.update(changes)
    return inputs


def test_doctests() -> None:
    assert doctest.testmod(qc_module).failed == 0


def test_clean_exam_passes() -> None:
    result = assess(**_good())
    assert result == QcVerdict("pass", (), result.metrics)
    assert result.metrics["slices"] == N_SLICES
    assert result.metrics["snr"] == 35.0


def _only_reason(result: QcVerdict, verdict: str, *words: str) -> None:
    assert result.verdict == verdict
    assert len(result.reasons) == 1, result.reasons
    assert result.reasons[0].startswith(f"{verdict}: ")
    for word in words:
        assert word in result.reasons[0]


def test_cord_missing_on_most_slices_fails() -> None:
    found = np.ones(N_SLICES, dtype=bool)
    found[:6] = False
    result = assess(**_good(cord_found_per_slice=found))
    _only_reason(result, "fail", "no cord found on 6 of 10 slices")
    assert result.metrics["slices_without_cord"] == 6


def test_cord_missing_on_a_few_slices_warns() -> None:
    found = np.ones(N_SLICES, dtype=bool)
    found[[0, 9]] = False
    area = np.full(N_SLICES, 80.0)
    area[[0, 9]] = 0.0  # area of a slice without a cord is not judged
    result = assess(**_good(cord_found_per_slice=found, cord_area_mm2_per_slice=area))
    _only_reason(result, "warn", "2 of 10 slices")


def test_exactly_half_the_slices_missing_still_only_warns() -> None:
    found = np.arange(N_SLICES) % 2 == 0
    assert assess(**_good(cord_found_per_slice=found)).verdict == "warn"


def test_protocol_mismatch_fails_and_unknown_protocol_warns() -> None:
    _only_reason(assess(**_good(protocol_matches_model=False)), "fail", "protocol")
    _only_reason(assess(**_good(protocol_matches_model=None)), "warn", "protocol")


@pytest.mark.parametrize(
    ("snr", "verdict"), [(7.9, "fail"), (8.0, "warn"), (14.9, "warn"), (15.0, "pass")]
)
def test_snr_limits(snr: float, verdict: str) -> None:
    result = assess(**_good(snr=snr))
    assert result.verdict == verdict
    if verdict != "pass":
        _only_reason(result, verdict, "SNR", f"{snr:.1f}")


def test_unmeasured_snr_warns() -> None:
    _only_reason(assess(**_good(snr=None)), "warn", "SNR")


def test_cord_area_out_of_range_warns() -> None:
    area = np.full(N_SLICES, 80.0)
    area[3] = 30.0
    area[4] = 170.0
    result = assess(**_good(cord_area_mm2_per_slice=area))
    _only_reason(result, "warn", "cord area", "2 slice(s)", "30-170")
    assert result.metrics["slices_area_out_of_range"] == 2


def test_centre_jump_between_slices_warns() -> None:
    shift = np.full(N_SLICES, 0.5)
    shift[0] = np.nan  # first slice has no predecessor
    shift[5] = 4.2
    result = assess(**_good(centre_shift_mm_per_slice=shift))
    _only_reason(result, "warn", "3 mm", "4.2 mm")
    assert result.metrics["max_centre_shift_mm"] == pytest.approx(4.2)


@pytest.mark.parametrize(("fraction", "verdict"), [(0.02, "pass"), (0.05, "warn"), (0.25, "fail")])
def test_voxels_outside_the_lookup_table(fraction: float, verdict: str) -> None:
    result = assess(**_good(outside_lookup_fraction=fraction))
    assert result.verdict == verdict
    if verdict != "pass":
        _only_reason(result, verdict, "lookup table", f"{100 * fraction:.1f} %")


@pytest.mark.parametrize(("fit", "verdict"), [(0.95, "pass"), (0.7, "warn"), (0.3, "fail")])
def test_template_fit(fit: float, verdict: str) -> None:
    result = assess(**_good(template_fit=fit))
    assert result.verdict == verdict
    if verdict != "pass":
        _only_reason(result, verdict, "normative model value")


def test_missing_b1_correction_warns() -> None:
    _only_reason(assess(**_good(b1_corrected=False)), "warn", "B1")


def test_failures_come_first_and_every_reason_is_listed() -> None:
    result = assess(**_good(snr=5.0, b1_corrected=False, protocol_matches_model=False))
    assert result.verdict == "fail"
    assert [r.split(":")[0] for r in result.reasons] == ["fail", "fail", "warn"]


def test_custom_thresholds() -> None:
    strict = QcThresholds(snr_fail=40.0, snr_warn=50.0)
    assert assess(**_good(), thresholds=strict).verdict == "fail"
    with pytest.raises(ValueError, match="snr_warn"):
        QcThresholds(snr_fail=20.0, snr_warn=10.0)


def test_assess_rejects_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="cord_area_mm2_per_slice"):
        assess(**_good(cord_area_mm2_per_slice=np.full(3, 80.0)))
    with pytest.raises(ValueError, match="centre_shift_mm_per_slice"):
        assess(**_good(centre_shift_mm_per_slice=np.zeros(3)))
    with pytest.raises(ValueError, match="outside_lookup_fraction"):
        assess(**_good(outside_lookup_fraction=3.0))
    with pytest.raises(ValueError, match="needs at least one reason"):
        QcVerdict("warn")


def test_no_slices_fails() -> None:
    result = assess(
        **_good(cord_area_mm2_per_slice=[], cord_found_per_slice=[], centre_shift_mm_per_slice=[])
    )
    assert result.verdict == "fail"


def _rician(seed: int, signal: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude of a disc of constant signal plus complex Gaussian noise."""
    rng = np.random.default_rng(seed)
    shape = (4, 128, 128)
    j, i = np.mgrid[:128, :128]
    disc = (j - 64) ** 2 + (i - 64) ** 2 < 35**2
    foreground = np.broadcast_to(disc, shape).copy()
    noise = sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    return np.abs(np.where(foreground, signal, 0.0) + noise), foreground


@pytest.mark.parametrize(("signal", "sigma"), [(100.0, 10.0), (300.0, 10.0), (60.0, 7.5)])
def test_snr_estimate_within_15_percent_on_rician_images(signal: float, sigma: float) -> None:
    image, foreground = _rician(11, signal, sigma)
    true_snr = signal / sigma
    assert estimate_snr(image, foreground) == pytest.approx(true_snr, rel=0.15)
    # Without the Rayleigh correction the estimate would be 1/0.655 = 1.5 times too high.
    assert estimate_snr(image, foreground) < 1.2 * true_snr


def test_snr_with_an_explicit_background_region() -> None:
    image, foreground = _rician(12, 200.0, 10.0)
    background = np.zeros_like(foreground)
    background[:, :10, :10] = True
    assert estimate_snr(image, foreground, background_mask=background) == pytest.approx(
        20.0, rel=0.15
    )


@pytest.mark.parametrize("margin_vox", [0, 1, 3])
def test_default_background_lies_beyond_the_margin(margin_vox: int) -> None:
    from scipy.ndimage import binary_dilation

    image, foreground = _rician(14, 150.0, 10.0)
    grown = binary_dilation(foreground, iterations=margin_vox) if margin_vox else foreground
    expected = estimate_snr(image, foreground, background_mask=~grown)
    assert estimate_snr(image, foreground, margin_vox=margin_vox) == expected


def test_snr_rejects_bad_masks() -> None:
    image, foreground = _rician(13, 100.0, 10.0)
    with pytest.raises(ValueError, match="foreground_mask"):
        estimate_snr(image, foreground.astype(int))
    with pytest.raises(ValueError, match="overlap"):
        estimate_snr(image, foreground, background_mask=foreground)
    with pytest.raises(ValueError, match="at least"):
        estimate_snr(image, np.ones_like(foreground))
    with pytest.raises(ValueError, match="no noise"):
        estimate_snr(np.where(foreground, 100.0, 0.0), foreground)
