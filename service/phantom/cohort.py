"""Cohort writer: controls and patients (with optional follow-up exams)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from processing.phantom.fields import draw_fields
from processing.phantom.lesions import draw_lesions, evolve_lesions
from processing.phantom.tissues import draw_tissue_t1
from service.phantom.anatomy import draw_subject_anatomy
from service.phantom.dicom_common import ExamContext
from service.phantom.exam import ExamPlan, slab_z_ranges, write_exam
from service.phantom.identity import SubjectIdentity, draw_identity, phantom_uid, subject_rng
from service.phantom.options import PhantomOptions
from service.phantom.protocols import PRESETS, site_protocols_toml
from service.phantom.truth import write_json

__all__ = ["write_cohort"]


def _context(
    seed: int,
    identity: SubjectIdentity,
    exam_dir: str,
    days_later: int,
    options: PhantomOptions,
    accession_empty: bool,
) -> ExamContext:
    exam_date = identity.first_exam_date + timedelta(days=days_later)
    digest = int(phantom_uid(seed, exam_dir, "accession").split(".")[-1]) % 10**7
    return ExamContext(
        seed=seed,
        identity=identity,
        exam_key=exam_dir,
        study_uid=phantom_uid(seed, exam_dir, "study"),
        frame_of_reference_uid=phantom_uid(seed, exam_dir, "frame-of-reference"),
        study_date=exam_date.strftime("%Y%m%d"),
        study_time=identity.exam_time,
        accession_number="" if accession_empty else f"A{digest:07d}",
        study_id=f"{digest % 10000:d}",
        preset=PRESETS[options.protocol],
        transfer_syntax=options.transfer_syntax,
    )


def _subject_plans(
    seed: int, kind: str, index: int, follow_up: bool, options: PhantomOptions
) -> list[ExamPlan]:
    rng = subject_rng(seed, kind, index)
    identity = draw_identity(seed, kind, index)
    anatomy = draw_subject_anatomy(rng, options.anatomy)
    rise = float(rng.uniform(0.02, 0.06)) if kind == "patient" else 0.0
    tissues = draw_tissue_t1(rng, rise)
    ranges = slab_z_ranges(anatomy, options)
    lesions = draw_lesions(rng, anatomy, ranges, int(rng.integers(1, 5))) if rise else ()
    centre = anatomy.centreline(anatomy.level_tops_mm[2])
    fields = draw_fields(rng, (float(centre[0]), float(centre[1]), anatomy.level_tops_mm[2]))
    exam_dir = f"{identity.subject_id}/exam-1"
    plans = [
        ExamPlan(
            seed=seed,
            subject_id=identity.subject_id,
            kind=kind,
            exam_number=1,
            context=_context(seed, identity, exam_dir, 0, options, rng.random() < 0.3),
            anatomy=anatomy,
            tissues=tissues,
            lesions=lesions,
            fields=fields,
            shift_mm=(0.0, 0.0, 0.0),
            follow_up=None,
        )
    ]
    if follow_up and kind == "patient":
        later, new_ids, enlarged_ids = evolve_lesions(rng, anatomy, lesions, ranges)
        change = float(rng.uniform(-0.01, 0.015))
        new_rise = min(max(rise + change, 0.0), 0.1)
        follow_dir = f"{identity.subject_id}/exam-2"
        days = int(rng.integers(180, 420))
        plans.append(
            ExamPlan(
                seed=seed,
                subject_id=identity.subject_id,
                kind=kind,
                exam_number=2,
                context=_context(seed, identity, follow_dir, days, options, rng.random() < 0.3),
                anatomy=anatomy,
                tissues=tissues.with_rise(new_rise),
                lesions=later,
                fields=draw_fields(rng, (float(centre[0]), float(centre[1]), 0.0)),
                shift_mm=(
                    float(rng.uniform(-1.0, 1.0)),
                    float(rng.uniform(-1.0, 1.0)),
                    float(rng.uniform(-1.5, 1.5)),
                ),
                follow_up={
                    "follow_up_of": exam_dir,
                    "days_after_baseline": days,
                    "new_lesion_ids": new_ids,
                    "enlarged_lesion_ids": enlarged_ids,
                    "diffuse_rise_baseline": round(rise, 5),
                    "diffuse_rise_change": round(new_rise - rise, 5),
                },
            )
        )
    return plans


def write_cohort(
    out_dir: Path,
    *,
    controls: int,
    patients: int,
    follow_up: bool,
    seed: int,
    options: PhantomOptions | None = None,
) -> Path:
    """Write a synthetic cohort of 7 T MP2RAGE cervical-cord exams with ground truth.

    Parameters
    ----------
    out_dir : Path
        Output folder (created; existing phantom files are overwritten).
    controls, patients : int
        Number of healthy controls and MS patients.
    follow_up : bool
        Give every patient a second, later exam with new/enlarged lesions.
    seed : int
        Same seed and options give byte-identical files.
    options : PhantomOptions, optional
        Acquisition options (defaults: 448 matrix, 2 slabs of 12 x 4 mm).

    Returns
    -------
    Path
        Path of ``cohort.json``.
    """
    options = options if options is not None else PhantomOptions()
    if not isinstance(options, PhantomOptions):
        raise TypeError("options must be a PhantomOptions")
    for name, value in (("controls", controls), ("patients", patients)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if controls + patients == 0:
        raise ValueError("the cohort needs at least one subject")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    subjects = []
    for kind, count in (("control", controls), ("patient", patients)):
        for index in range(1, count + 1):
            plans = _subject_plans(seed, kind, index, follow_up, options)
            exams = []
            for plan in plans:
                write_exam(out, plan, options)
                exams.append(
                    {
                        "exam_dir": plan.exam_dir,
                        "study_uid": plan.context.study_uid,
                        "follow_up_of": plan.follow_up["follow_up_of"] if plan.follow_up else None,
                    }
                )
            subjects.append({"id": plans[0].subject_id, "kind": kind, "exams": exams})
    preset = PRESETS[options.protocol]
    (out / "site-protocols.toml").write_text(site_protocols_toml([preset]))
    cohort_path = out / "cohort.json"
    write_json(cohort_path, subjects)
    return cohort_path
