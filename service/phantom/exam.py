"""Simulate and write one phantom exam: DICOM series of every slab plus ground truth."""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
from processing.phantom.anatomy import Material, SubjectAnatomy
from processing.phantom.fields import FieldParameters
from processing.phantom.geometry import SlabGeometry, slab_geometry
from processing.phantom.lesions import Lesion
from processing.phantom.simulate import SlabImages, noise_sigma, simulate_slab
from processing.phantom.tissues import PROTON_DENSITY, TissueT1
from service.phantom.dicom_common import ExamContext, SeriesSpec
from service.phantom.dicom_enhanced import write_enhanced_series
from service.phantom.dicom_legacy import write_legacy_series
from service.phantom.identity import phantom_uid
from service.phantom.options import PhantomOptions
from service.phantom.protocols import B1_MAP_SCALE, ProtocolPreset
from service.phantom.truth import lesion_statistics, write_json, write_slab_truth

__all__ = ["B1_MAP_SCALE", "ExamPlan", "slab_z_ranges", "write_exam"]

#: Margin (mm) kept between lesions and slab ends (covers the follow-up repositioning).
_SLAB_MARGIN_MM = 3.5
_FIRST_SERIES_NUMBER = 4


@dataclass(frozen=True)
class ExamPlan:
    """Everything that defines one exam of one subject."""

    seed: int
    subject_id: str
    kind: str
    exam_number: int
    context: ExamContext
    anatomy: SubjectAnatomy
    tissues: TissueT1
    lesions: tuple[Lesion, ...]
    fields: FieldParameters
    shift_mm: tuple[float, float, float]
    follow_up: dict[str, object] | None

    @property
    def exam_dir(self) -> str:
        """Path of the exam relative to the cohort folder."""
        return f"{self.subject_id}/exam-{self.exam_number}"


def _slab_centre_z(anatomy: SubjectAnatomy, options: PhantomOptions, slab: int) -> float:
    length = options.slices_per_slab * options.slice_mm
    top = anatomy.level_tops_mm[0] - 3.0
    return float(top - length / 2.0 - (slab - 1) * length)


def slab_z_ranges(anatomy: SubjectAnatomy, options: PhantomOptions) -> list[tuple[float, float]]:
    """Cranio-caudal range (mm) of each slab where lesions may be placed."""
    half = options.slices_per_slab * options.slice_mm / 2.0
    ranges = []
    for slab in range(1, options.slabs + 1):
        z = _slab_centre_z(anatomy, options, slab)
        margin = min(_SLAB_MARGIN_MM, 0.3 * half)
        ranges.append((z - half + margin, z + half - margin))
    return ranges


def _geometry(plan: ExamPlan, options: PhantomOptions, slab: int) -> SlabGeometry:
    z = _slab_centre_z(plan.anatomy, options, slab) + plan.shift_mm[2]
    xc, yc = plan.anatomy.centreline(np.asarray(z))
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
    if options.b1_map:
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
        "anatomy": asdict(plan.anatomy),
        "slabs": slab_info,
        "lesions": lesion_statistics(plan.lesions, slabs, plan.anatomy),
        "follow_up": plan.follow_up,
    }
    write_json(exam_root / "truth" / "truth.json", truth)
    return truth
