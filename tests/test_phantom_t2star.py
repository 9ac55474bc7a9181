"""Phantom T2*-weighted multi-echo GRE and coarse B1 map: physics, DICOM series, truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.components import Component, classify
from processing.phantom import draw_anatomy, draw_fields, draw_tissue_t1, slab_geometry
from processing.phantom.anatomy import Material
from processing.phantom.gre import GREProtocol, gre_noise_sigma, gre_signal, simulate_gre_slab
from processing.phantom.lesions import Lesion
from processing.phantom.t2star import draw_tissue_t2star, t2star_material_table
from service.phantom import PhantomOptions, write_cohort

# The analytic anatomy: the echo-decay check averages a 19 mm field, which the real canal's
# slowly decaying CSF fills; real shapes are tested in test_phantom_real_anatomy.py.
TINY = PhantomOptions(matrix=32, voxel_mm=0.6, slices_per_slab=3, slabs=1, anatomy="simple")


def _write(root: Path, seed: int = 5, **changes: object) -> Path:
    options = PhantomOptions(**{**TINY.__dict__, "t2star": True, **changes})
    write_cohort(root, controls=1, patients=1, follow_up=False, seed=seed, options=options)
    return root


def _series(exam: Path, component: str) -> list[Path]:
    return sorted(p for p in (exam / "dicom").iterdir() if f"_{component}" in p.name)


def test_tissue_t2star_values_and_lesions() -> None:
    for seed in range(20):
        t = draw_tissue_t2star(np.random.default_rng(seed))
        wm, gm, csf = (t.t2star_ms(m) for m in (Material.WM, Material.GM, Material.CSF))
        assert 25 < wm < gm - 3 < 45 and csf > 80
        assert max(t.t2star_ms(m) for m in (Material.FAT, Material.MUSCLE)) < wm
    damaged = draw_tissue_t2star(np.random.default_rng(0), diffuse_t1_rise=0.06)
    healthy = draw_tissue_t2star(np.random.default_rng(0))
    assert damaged.t2star_ms(Material.WM) == pytest.approx(healthy.t2star_ms(Material.WM) * 1.03)
    assert damaged.t2star_ms(Material.CSF) == healthy.t2star_ms(Material.CSF)
    lesion = Lesion(1, 0.0, 0.0, 0.0, 1.0, 1.0, 2.0, "posterior", "midline", "mixed", 1.4, 1)
    table = t2star_material_table(healthy, (lesion,))
    assert table[Material.WM] < table[-2] < 1.3 * table[Material.WM]  # lesion in WM
    assert table[Material.GM] < table[-1]  # lesion in GM


def test_gre_contrast_grey_matter_and_csf_bright() -> None:
    protocol = GREProtocol()
    pd = np.array([0.70, 0.80, 1.00])
    signal = gre_signal(
        pd, np.array([1190.0, 1310.0, 3700.0]), np.array([30, 37.5, 110]), protocol
    )
    wm, gm, csf = np.sqrt((signal**2).sum(axis=0))
    assert gm > 1.15 * wm and csf > 1.2 * gm
    assert np.all(np.diff(signal[:, 0]) < 0)  # decays over the echoes
    with pytest.raises(ValueError, match="increasing"):
        GREProtocol((10.0, 5.0))
    with pytest.raises(ValueError, match="repetition"):
        GREProtocol((5.0, 10.0), repetition_time_ms=8.0)


def test_gre_slab_on_its_own_grid_with_rician_noise_and_motion() -> None:
    rng = np.random.default_rng(2)
    anatomy = draw_anatomy(rng)
    tissues = draw_tissue_t1(rng)
    t2star = draw_tissue_t2star(rng)
    z = anatomy.level_tops_mm[2]
    xc, yc = anatomy.centreline(np.asarray(z))
    fields = draw_fields(rng, (float(xc), float(yc), z))
    grid = slab_geometry((float(xc), float(yc), z), n_slices=2, rows=100, cols=100,
                         voxel_mm=0.22, slice_mm=3.0)  # fmt: skip
    protocol = GREProtocol()
    clean = simulate_gre_slab(grid, anatomy, (), tissues, t2star, fields, protocol, 0.0, rng)
    sigma = gre_noise_sigma(20.0, protocol)
    noisy = simulate_gre_slab(grid, anatomy, (), tissues, t2star, fields, protocol, sigma, rng)
    assert clean.echoes.shape == (4, 2, 100, 100)
    wm = clean.cord & ~clean.gm
    ratio = clean.combined[clean.gm].mean() / clean.combined[wm].mean()
    assert 1.1 < ratio < 1.35
    residual = (noisy.echoes - clean.echoes)[0][wm]
    assert np.std(residual) == pytest.approx(sigma, rel=0.15)
    moved = simulate_gre_slab(grid, anatomy, (), tissues, t2star, fields, protocol, 0.0, rng,
                              motion_mm=(0.88, 0.0, 0.0))  # fmt: skip
    # columns run along +x: the cord moves by 4 columns of 0.22 mm
    assert np.array_equal(moved.cord[:, :, 4:], clean.cord[:, :, :-4])


def test_legacy_multi_echo_series_on_its_own_grid(tmp_path: Path) -> None:
    root = _write(tmp_path, oblique_deg=12.0, t2star_shift_mm=(0.3, 0.0, 0.0))
    exam = root / "patient-001/exam-1"
    (folder,) = _series(exam, "T2STAR")
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    n_slices = round(TINY.slices_per_slab * TINY.slice_mm / 3.0)
    assert len(datasets) == 4 * n_slices
    uni = pydicom.dcmread(next(_series(exam, "UNI")[0].glob("*.dcm")))
    first = datasets[0]
    assert {d.SeriesInstanceUID for d in datasets} == {first.SeriesInstanceUID}
    assert {d.FrameOfReferenceUID for d in datasets} == {uni.FrameOfReferenceUID}
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    echoes = sorted({(int(d.EchoNumbers), float(d.EchoTime)) for d in datasets})
    assert echoes == [(1, 5.0), (2, 10.0), (3, 15.0), (4, 20.0)]
    assert first.ScanningSequence == "GR" and first.SequenceVariant == "SP"
    assert "InversionTime" not in first
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND"]
    assert first.MRAcquisitionType == "2D" and float(first.FlipAngle) == 20.0
    assert float(first.SliceThickness) == 3.0
    assert [float(v) for v in first.PixelSpacing] == [0.22, 0.22]
    assert first.Rows == round(TINY.matrix * TINY.voxel_mm / 0.22)
    assert np.allclose(first.ImageOrientationPatient, uni.ImageOrientationPatient, atol=1e-6)
    assert classify(first) == Component.T2STAR
    # same slice, later echo: darker cord and CSF (T2* decay)
    by_echo = {
        (int(d.EchoNumbers), d.ImagePositionPatient[2]): d.pixel_array.astype(float)
        for d in datasets
    }
    position = first.ImagePositionPatient[2]
    assert by_echo[(4, position)].mean() < 0.8 * by_echo[(1, position)].mean()
    truth = json.loads((exam / "truth/truth.json").read_text())
    record = truth["slabs"][0]["t2star"]
    assert record["series"] == f"dicom/{folder.name}"
    assert record["echo_times_ms"] == [5.0, 10.0, 15.0, 20.0]
    assert record["shape"] == [n_slices, first.Rows, first.Columns]
    assert record["subject_shift_mm"] == [0.3, 0.0, 0.0]
    assert np.allclose(np.asarray(record["affine_lps"])[:3, 3], first.ImagePositionPatient)
    tissues = truth["tissue_t2star_ms"]["effective"]
    assert tissues["GM"] > tissues["WM"]


def test_enhanced_multi_echo_and_combined(tmp_path: Path) -> None:
    legacy = _write(tmp_path / "legacy")
    enhanced = _write(tmp_path / "enhanced", enhanced=True)
    combined = _write(tmp_path / "combined", t2star_combined=True)
    exam = "control-001/exam-1"
    (folder,) = _series(enhanced / exam, "T2STAR")
    (path,) = folder.glob("*.dcm")
    ds = pydicom.dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    n_slices = len(frames) // 4
    assert ds.NumberOfFrames == 4 * n_slices
    assert [f.MREchoSequence[0].EffectiveEchoTime for f in frames[::n_slices]] == [5, 10, 15, 20]
    assert [f.FrameContentSequence[0].DimensionIndexValues for f in frames[:2]] == [
        [1, 1, 1],
        [1, 2, 1],
    ]
    assert ds.DimensionIndexSequence[2].DimensionIndexPointer == 0x00189082
    assert ds.AcquisitionContrast == "T2_STAR"
    assert classify(ds) == Component.T2STAR
    single = [
        pydicom.dcmread(p).pixel_array
        for p in sorted(_series(legacy / exam, "T2STAR")[0].glob("*"))
    ]
    assert np.array_equal(ds.pixel_array, np.stack(single))
    echoes = np.stack(single).astype(float).reshape(4, n_slices, *single[0].shape)
    rss_files = sorted(_series(combined / exam, "T2STAR")[0].glob("*.dcm"))
    assert len(rss_files) == n_slices
    rss = np.stack([pydicom.dcmread(p).pixel_array for p in rss_files]).astype(float)
    assert np.abs(rss - np.sqrt((echoes**2).sum(axis=0))).max() <= 2.0  # rounding only
    assert float(pydicom.dcmread(rss_files[0]).EchoTime) == 12.5


def test_gre_headers_identify_it_without_a_telling_description(tmp_path: Path) -> None:
    """What a classifier can use when the description says nothing."""
    root = _write(tmp_path, t2star_description="cord_axial", b1_map=True)
    exam = root / "control-001/exam-1"
    (folder,) = _series(exam, "T2STAR")
    datasets = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    ds = datasets[0]
    assert ds.SeriesDescription == "cord_axial" and ds.ProtocolName == "cord_axial"
    assert ds.ScanningSequence == "GR" and "IR" not in ds.get("ScanOptions", "")
    assert "InversionTime" not in ds
    assert len({float(d.EchoTime) for d in datasets}) == 4
    others = [pydicom.dcmread(next(p.glob("*.dcm"))) for p in (exam / "dicom").iterdir()]
    # the GRE series is the only one that is neither an inversion image nor a derived map
    # and has several echo times; the MP2RAGE series keep their own components
    assert sorted(classify(d) for d in others if d.SeriesDescription != "cord_axial") == sorted(
        [Component.INV1, Component.INV2, Component.UNI, Component.T1MAP, Component.B1MAP]
    )


def test_coarse_b1_map_has_its_own_grid_covering_both_slabs(tmp_path: Path) -> None:
    root = _write(tmp_path, slabs=2, b1_map=True, b1_grid="coarse", t2star=False, matrix=40)
    exam = root / "control-001/exam-1"
    (folder,) = _series(exam, "B1MAP")
    assert folder.name.endswith("_B1MAP")
    datasets = sorted(
        (pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: d.InstanceNumber
    )
    assert float(datasets[0].SliceThickness) == 5.0
    assert [float(v) for v in datasets[0].PixelSpacing] == [3.5, 3.5]
    truth = json.loads((exam / "truth/truth.json").read_text())
    assert truth["b1_map"]["series"] == f"dicom/{folder.name}"
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    for slab in truth["slabs"]:
        affine = np.asarray(slab["affine_lps"])
        first, last = affine[2, 3], affine[2, 3] + affine[2, 0] * (slab["shape"][0] - 1)
        assert min(z) <= min(first, last) and max(z) >= max(first, last)
    values = np.stack([d.pixel_array for d in datasets]) / truth["b1"]["map_scale"]
    assert 0.7 < values.min() <= values.max() < 1.1
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    same = _write(tmp_path / "same", slabs=2, b1_map=True, t2star=False, matrix=40)
    assert len(_series(same / "control-001/exam-1", "B1MAP")) == 2
    with pytest.raises(ValueError, match="b1_map"):
        PhantomOptions(b1_grid="coarse")


def test_t2star_options_validated_and_reproducible(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="t2star_echo_times_ms"):
        PhantomOptions(t2star_echo_times_ms=(10.0, 5.0))
    with pytest.raises(ValueError, match="t2star_shift_mm"):
        PhantomOptions(t2star_shift_mm=(9.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="t2star_voxel_mm"):
        PhantomOptions(t2star_voxel_mm=0.0)
    files = []
    for name in ("a", "b"):
        root = _write(tmp_path / name, seed=9)
        files.append({str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.dcm")})
    assert files[0] == files[1]
