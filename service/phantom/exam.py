"""Simulate and write one phantom exam: DICOM series of every slab plus ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from processing.mp2rage import (
    T1LookupTable,
    signals,
    stored_to_uni,
    t1_from_uni,
    uni_to_stored,
)
from processing.phantom.anatomy import Material
from processing.phantom.fields import FieldParameters
from processing.phantom.geometry import SlabGeometry, slab_geometry
from processing.phantom.gre import GREProtocol, gre_noise_sigma, gre_signal, simulate_gre_slab
from processing.phantom.lesions import Lesion
from processing.phantom.protocol import Anatomy
from processing.phantom.simulate import SlabImages, noise_sigma, simulate_slab
from processing.phantom.t2star import TissueT2Star, draw_tissue_t2star
from processing.phantom.tissues import PROTON_DENSITY, TissueT1
from service.phantom.dicom_common import ExamContext, GRETiming, SeriesSpec
from service.phantom.dicom_enhanced import write_enhanced_series
from service.phantom.dicom_legacy import write_legacy_series
from service.phantom.identity import phantom_uid
from service.phantom.options import PhantomOptions
from service.phantom.protocols import B1_MAP_SCALE, ProtocolPreset
from service.phantom.truth import lesion_statistics, write_json, write_slab_truth

__all__ = ["B1_MAP_SCALE", "ExamPlan", "slab_z_ranges", "subject_t2star", "write_exam"]

#: Margin (mm) kept between lesions and slab ends (covers the follow-up repositioning).
_SLAB_MARGIN_MM = 3.5
_FIRST_SERIES_NUMBER = 4
#: Coarse B1 map grid (``b1_grid="coarse"``): pixel spacing and slice thickness (mm).
_B1_COARSE_VOXEL_MM = 3.5
_B1_COARSE_SLICE_MM = 5.0
#: Stored GRE value of nominal cord WM at the first echo (receive field 1).
_GRE_WM_STORED = 500.0
#: Random stream of a subject's T2* values (independent of the T1 / anatomy streams).
_T2STAR_STREAM = 7


@dataclass(frozen=True)
class ExamPlan:
    """Everything that defines one exam of one subject."""

    seed: int
    subject_id: str
    kind: str
    exam_number: int
    context: ExamContext
    anatomy: Anatomy
    tissues: TissueT1
    lesions: tuple[Lesion, ...]
    fields: FieldParameters
    shift_mm: tuple[float, float, float]
    follow_up: dict[str, object] | None

    @property
    def exam_dir(self) -> str:
        """Path of the exam relative to the cohort folder."""
        return f"{self.subject_id}/exam-{self.exam_number}"


def _slab_centre_z(anatomy: Anatomy, options: PhantomOptions, slab: int) -> float:
    length = options.slices_per_slab * options.slice_mm
    top = anatomy.level_tops_mm[0] - 3.0
    return float(top - length / 2.0 - (slab - 1) * length)


def slab_z_ranges(anatomy: Anatomy, options: PhantomOptions) -> list[tuple[float, float]]:
    """Cranio-caudal range (mm) of each slab where lesions may be placed."""
    half = options.slices_per_slab * options.slice_mm / 2.0
    ranges = []
    for slab in range(1, options.slabs + 1):
        z = _slab_centre_z(anatomy, options, slab)
        margin = min(_SLAB_MARGIN_MM, 0.3 * half)
        ranges.append((z - half + margin, z + half - margin))
    return ranges


def _fov_centre(plan: ExamPlan, options: PhantomOptions, z_mm: float) -> tuple[float, float]:
    """Field-of-view centre (x, y) at z: the cord centre plus the anatomy's planning offset,
    limited so that the cord stays at least 15 mm inside the field of view."""
    xc, yc = plan.anatomy.centreline(np.asarray(z_mm))
    room = max(0.0, options.matrix * options.voxel_mm / 2.0 - 15.0)
    ox, oy = (float(np.clip(v, -room, room)) for v in plan.anatomy.fov_offset_mm)
    return float(xc) + ox, float(yc) + oy


def _geometry(plan: ExamPlan, options: PhantomOptions, slab: int) -> SlabGeometry:
    z = _slab_centre_z(plan.anatomy, options, slab) + plan.shift_mm[2]
    xc, yc = _fov_centre(plan, options, z)
    return slab_geometry(
        (float(xc) + plan.shift_mm[0], float(yc) + plan.shift_mm[1], z),
        n_slices=options.slices_per_slab,
        rows=options.matrix,
        cols=options.matrix,
        voxel_mm=options.voxel_mm,
        slice_mm=options.slice_mm,
        oblique_deg=options.oblique_deg,
    )


def _inversion_gain(preset: ProtocolPreset) -> float:
    """Scale from signal units to stored INV values (nominal WM INV2 = 1000)."""
    _, s2 = signals(1.19, preset.mp2rage)
    return 1000.0 / float(abs(s2) * PROTON_DENSITY[Material.WM])


def _to_uint16(values: NDArray[np.float64], maximum: int) -> NDArray[np.uint16]:
    return np.clip(np.rint(np.nan_to_num(values)), 0, maximum).astype(np.uint16)


def _series_for_slab(
    plan: ExamPlan,
    options: PhantomOptions,
    slab: int,
    images: SlabImages,
    geometry: SlabGeometry,
    first_number: int,
    table: T1LookupTable,
) -> list[SeriesSpec]:
    preset = plan.context.preset
    p = preset.mp2rage
    gain = _inversion_gain(preset)
    uni_stored = uni_to_stored(images.uni)
    t1_ms = t1_from_uni(stored_to_uni(uni_stored), table) * 1000.0
    name = preset.protocol_name
    kinds: list[tuple[str, str, tuple[str, ...], NDArray[np.uint16], int, tuple, float | None]]
    kinds = [
        (
            "INV1",
            f"{name}_INV1",
            ("ORIGINAL", "PRIMARY", "M", "ND"),
            _to_uint16(np.abs(images.s1) * gain, 4095),
            12,
            (600.0, 1200.0),
            p.ti1_s * 1000.0,
        ),
        (
            "INV2",
            f"{name}_INV2",
            ("ORIGINAL", "PRIMARY", "M", "ND"),
            _to_uint16(np.abs(images.s2) * gain, 4095),
            12,
            (1000.0, 2000.0),
            p.ti2_s * 1000.0,
        ),
        (
            "UNI",
            f"{name}_UNI_Images",
            ("DERIVED", "PRIMARY", "M", "ND", "UNI"),
            uni_stored,
            12,
            (2048.0, 4096.0),
            None,
        ),
    ]
    if options.scanner_t1_map:
        kinds.append(
            (
                "T1MAP",
                f"{name}_T1_Images",
                ("DERIVED", "PRIMARY", "T1 MAP", "ND"),
                _to_uint16(t1_ms, 65535),
                16,
                (1500.0, 3000.0),
                None,
            )
        )
    if options.b1_map and options.b1_grid == "same":
        kinds.append(
            (
                "B1MAP",
                f"{name}_B1map",
                ("ORIGINAL", "PRIMARY", "FLIP ANGLE MAP", "ND"),
                _to_uint16(images.b1 * B1_MAP_SCALE, 4095),
                12,
                (B1_MAP_SCALE, B1_MAP_SCALE),
                None,
            )
        )
    out = []
    for offset, (component, description, image_type, pixels, bits, window, ti) in enumerate(kinds):
        number = first_number + offset
        out.append(
            SeriesSpec(
                component=component,
                slab=slab,
                series_number=number,
                series_uid=phantom_uid(plan.seed, plan.exam_dir, "series", number),
                description=description,
                image_type=image_type,
                pixels=pixels,
                geometry=geometry,
                bits_stored=bits,
                window=window,
                inversion_time_ms=ti,
                flip_angle_deg=p.flip2_deg if component == "INV2" else p.flip1_deg,
            )
        )
    return out


def subject_t2star(plan: ExamPlan) -> TissueT2Star:
    """The subject's T2* values (same for every exam), with this exam's diffuse rise."""
    rng = np.random.default_rng([plan.seed, _T2STAR_STREAM, *map(ord, plan.subject_id)])
    return draw_tissue_t2star(rng, plan.tissues.diffuse_rise)


def _t2star_geometry(plan: ExamPlan, options: PhantomOptions, slab: int) -> SlabGeometry:
    """The GRE grid of a slab: own pixels, slices and matrix, same centre and obliquity."""
    z = _slab_centre_z(plan.anatomy, options, slab) + plan.shift_mm[2]
    xc, yc = _fov_centre(plan, options, z)
    matrix = options.t2star_grid_matrix
    return slab_geometry(
        (float(xc) + plan.shift_mm[0], float(yc) + plan.shift_mm[1], z),
        n_slices=options.t2star_slices,
        rows=matrix,
        cols=matrix,
        voxel_mm=options.t2star_voxel_mm,
        slice_mm=options.t2star_slice_mm,
        oblique_deg=options.oblique_deg,
    )


def _t2star_series(
    plan: ExamPlan, options: PhantomOptions, slab: int, number: int
) -> tuple[SeriesSpec, dict[str, object]]:
    """Simulate the multi-echo GRE of one slab; its series and its truth record."""
    protocol = GREProtocol(options.t2star_echo_times_ms)
    geometry = _t2star_geometry(plan, options, slab)
    rng = np.random.default_rng(
        [plan.seed, plan.exam_number, slab, _T2STAR_STREAM, *map(ord, plan.subject_id)]
    )
    images = simulate_gre_slab(
        geometry, plan.anatomy, plan.lesions, plan.tissues, subject_t2star(plan), plan.fields,
        protocol, gre_noise_sigma(options.t2star_snr, protocol), rng,
        motion_mm=options.t2star_shift_mm,
    )  # fmt: skip
    reference = gre_signal(PROTON_DENSITY[Material.WM], 1190.0, 30.0, protocol)[0]
    gain = _GRE_WM_STORED / float(reference)
    timing = GRETiming(
        echo_times_ms=protocol.echo_times_ms,
        repetition_time_ms=protocol.repetition_time_ms,
        flip_angle_deg=protocol.flip_deg,
        combined=options.t2star_combined,
    )
    pixels = images.combined if options.t2star_combined else images.echoes
    spec = SeriesSpec(
        component="T2STAR",
        slab=slab,
        series_number=number,
        series_uid=phantom_uid(plan.seed, plan.exam_dir, "series", number),
        description=options.t2star_description,
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        pixels=_to_uint16(pixels * gain, 4095),
        geometry=geometry,
        bits_stored=12,
        window=(2.0 * _GRE_WM_STORED, 4.0 * _GRE_WM_STORED),
        inversion_time_ms=None,
        flip_angle_deg=protocol.flip_deg,
        gre=timing,
    )
    info: dict[str, object] = {
        "series": f"dicom/{spec.folder}",
        "shape": list(geometry.shape),
        "affine_lps": np.round(geometry.affine_lps, 6).tolist(),
        "voxel_mm": options.t2star_voxel_mm,
        "slice_mm": options.t2star_slice_mm,
        "echo_times_ms": list(protocol.echo_times_ms),
        "repetition_time_ms": protocol.repetition_time_ms,
        "flip_deg": protocol.flip_deg,
        "combined": options.t2star_combined,
        "subject_shift_mm": list(options.t2star_shift_mm),
        "snr": options.t2star_snr,
        "stored_per_signal": round(gain, 6),
        "cord_voxels": int(images.cord.sum()),
        "gm_voxels": int(images.gm.sum()),
    }
    return spec, info


def _coarse_b1_geometry(plan: ExamPlan, options: PhantomOptions) -> SlabGeometry:
    """One coarse grid covering every slab (same obliquity), for the B1 map."""
    z_top = _slab_centre_z(plan.anatomy, options, 1)
    z_bottom = _slab_centre_z(plan.anatomy, options, options.slabs)
    z = 0.5 * (z_top + z_bottom) + plan.shift_mm[2]
    xc, yc = _fov_centre(plan, options, z)
    extent_mm = options.slabs * options.slices_per_slab * options.slice_mm
    fov_mm = options.matrix * options.voxel_mm
    matrix = int(np.ceil(fov_mm / _B1_COARSE_VOXEL_MM)) + 1
    return slab_geometry(
        (float(xc) + plan.shift_mm[0], float(yc) + plan.shift_mm[1], z),
        n_slices=int(np.ceil(extent_mm / _B1_COARSE_SLICE_MM)) + 1,
        rows=matrix,
        cols=matrix,
        voxel_mm=_B1_COARSE_VOXEL_MM,
        slice_mm=_B1_COARSE_SLICE_MM,
        oblique_deg=options.oblique_deg,
    )


def _coarse_b1_series(plan: ExamPlan, options: PhantomOptions, number: int) -> SeriesSpec:
    """The exam's B1 map on its own coarse grid: the smooth field at the voxel centres."""
    geometry = _coarse_b1_geometry(plan, options)
    n, rows, cols = geometry.shape
    kk, jj, ii = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    b1 = plan.fields.b1(geometry.points_mm(kk, jj, ii))
    p = plan.context.preset.mp2rage
    return SeriesSpec(
        component="B1MAP",
        slab=0,
        series_number=number,
        series_uid=phantom_uid(plan.seed, plan.exam_dir, "series", number),
        description=f"{plan.context.preset.protocol_name}_B1map",
        image_type=("ORIGINAL", "PRIMARY", "FLIP ANGLE MAP", "ND"),
        pixels=_to_uint16(b1 * B1_MAP_SCALE, 4095),
        geometry=geometry,
        bits_stored=12,
        window=(B1_MAP_SCALE, B1_MAP_SCALE),
        inversion_time_ms=None,
        flip_angle_deg=p.flip1_deg,
    )


def write_exam(out_dir: Path, plan: ExamPlan, options: PhantomOptions) -> dict[str, object]:
    """Simulate every slab of ``plan`` and write DICOM series and truth under ``out_dir``.

    Returns
    -------
    dict
        The truth.json payload (also written to ``<exam>/truth/truth.json``).
    """
    exam_root = out_dir / plan.exam_dir
    preset = plan.context.preset
    sigma = noise_sigma(options.snr, preset.mp2rage)
    table = T1LookupTable.build(preset.mp2rage)
    writer = write_enhanced_series if options.enhanced else write_legacy_series
    slabs: list[tuple[SlabGeometry, SlabImages]] = []
    slab_info = []
    number = _FIRST_SERIES_NUMBER
    b1_values = []
    for slab in range(1, options.slabs + 1):
        geometry = _geometry(plan, options, slab)
        rng = np.random.default_rng(
            [plan.seed, plan.exam_number, slab, *map(ord, plan.subject_id)]
        )
        images = simulate_slab(
            geometry, plan.anatomy, plan.lesions, plan.tissues, plan.fields, preset.mp2rage,
            sigma, rng,
        )  # fmt: skip
        series = _series_for_slab(plan, options, slab, images, geometry, number, table)
        number += len(series)
        t2star_info = None
        if options.t2star:
            gre_spec, t2star_info = _t2star_series(plan, options, slab, number)
            series.append(gre_spec)
            number += 1
        folders = {}
        for spec in series:
            writer(plan.context, spec, exam_root / "dicom" / spec.folder)
            folders[spec.component] = f"dicom/{spec.folder}"
        write_slab_truth(exam_root / "truth", slab, images, geometry)
        slabs.append((geometry, images))
        b1_values.append((images.b1.min(), images.b1.max()))
        centres = geometry.slice_centres_mm()
        slab_info.append(
            {
                "slab": slab,
                "series": folders,
                "shape": list(geometry.shape),
                "affine_lps": np.round(geometry.affine_lps, 6).tolist(),
                "voxel_mm": options.voxel_mm,
                "slice_mm": options.slice_mm,
                "oblique_deg": options.oblique_deg,
                "slice_levels": plan.anatomy.level_at(centres[:, 2]).astype(int).tolist(),
                "cord_b1_mean": round(float(images.b1[images.cord].mean()), 4)
                if images.cord.any()
                else None,
            }
        )
        if t2star_info is not None:
            slab_info[-1]["t2star"] = t2star_info
    b1_record = None
    if options.b1_map and options.b1_grid == "coarse":
        spec = _coarse_b1_series(plan, options, number)
        writer(plan.context, spec, exam_root / "dicom" / spec.folder)
        b1_record = {
            "grid": "coarse",
            "series": f"dicom/{spec.folder}",
            "shape": list(spec.geometry.shape),
            "affine_lps": np.round(spec.geometry.affine_lps, 6).tolist(),
            "voxel_mm": _B1_COARSE_VOXEL_MM,
            "slice_mm": _B1_COARSE_SLICE_MM,
        }
    tissues = plan.tissues
    truth: dict[str, object] = {
        "subject": plan.subject_id,
        "kind": plan.kind,
        "seed": plan.seed,
        "exam": f"exam-{plan.exam_number}",
        "study_uid": plan.context.study_uid,
        "study_date": plan.context.study_date,
        "coordinate_system": "DICOM LPS, mm",
        "protocol": preset.as_dict(),
        "tissue_t1_ms": {
            "healthy": {k: round(v, 3) for k, v in tissues.healthy_ms.items()},
            "effective": {
                m.name: round(tissues.t1_ms(m), 3) for m in Material if m != Material.AIR
            },
        },
        "diffuse_rise": round(tissues.diffuse_rise, 5),
        "b1": {
            "min": round(float(min(v[0] for v in b1_values)), 4),
            "max": round(float(max(v[1] for v in b1_values)), 4),
            "map_scale": B1_MAP_SCALE,
        },
        "snr": options.snr,
        "noise_sigma": sigma,
        "anatomy": plan.anatomy.as_dict(),
        "slabs": slab_info,
        "lesions": lesion_statistics(plan.lesions, slabs, plan.anatomy),
        "follow_up": plan.follow_up,
    }
    if b1_record is not None:
        truth["b1_map"] = b1_record
    if options.t2star:
        t2star = subject_t2star(plan)
        truth["tissue_t2star_ms"] = {
            "healthy": {k: round(v, 3) for k, v in t2star.healthy_ms.items()},
            "effective": {
                m.name: round(t2star.t2star_ms(m), 3) for m in Material if m != Material.AIR
            },
            "diffuse_rise": round(t2star.diffuse_rise, 5),
        }
    write_json(exam_root / "truth" / "truth.json", truth)
    return truth
