"""`cordt1 model build`: a normative T1 model from the DICOM exams of healthy controls.

Two passes: every control is segmented with the PAM50 atlas' GM prior, a GM prior is learned
from those segmentations (shrunk towards the atlas), then every control is segmented again
with the learned prior and its T1 averaged into the template. The learned prior is saved with
the model, so patients are segmented the same way the controls were.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from dicom_node.instance import PseudonymKey
from processing.mp2rage import MP2RAGEProtocol
from processing.normative import NormativeModel, build_normative_model, with_voxel_noise
from processing.template import (
    TEMPLATE_EXTENT,
    TEMPLATE_SHAPE_UV,
    TEMPLATE_Z_BINS_PER_SLAB,
    gm_prior_from_controls,
)
from service import __version__
from service.inputs.exam import (
    ExamError,
    ExamSeries,
    Slab,
    dicom_files,
    find_exam_series,
    match_slabs,
    slab_foreground,
)
from service.inputs.protocol import SiteProtocol
from service.inputs.t1_map import slab_t1
from service.pipeline.atlas import pam50_gm_prior
from service.pipeline.model_store import (
    ModelMetadata,
    ProtocolMismatch,
    check_protocol,
    load_model,
    save_model,
)
from service.pipeline.quantify import SlabAnatomy, assess_exam, segment_slab

__all__ = ["ScoringModel", "build_model", "load_scoring_model"]

log = logging.getLogger(__name__)

GM_PRIOR_FILE = "gm_prior.npz"
SMOOTHING_SIGMA_VOX = 1.0
SHRINKAGE_N0 = 5.0
MIN_CONTROLS = 3


@dataclass(frozen=True)
class ScoringModel:
    """A normative model ready to score exams."""

    model: NormativeModel
    metadata: ModelMetadata
    gm_prior: NDArray[np.float64]

    @property
    def n_slabs(self) -> int:
        """Slabs per exam the model was built for."""
        return int(self.metadata.template_parameters["n_slabs"])

    def summary(self) -> dict[str, object]:
        """The ``model`` block of summary.json."""
        return {
            "model_version": self.metadata.model_version,
            "protocol_name": self.metadata.protocol_name,
            "n_controls": self.metadata.n_controls,
            "created_at": self.metadata.created_at.isoformat(),
            "software_version": self.metadata.software_version,
        }


def _prior_bytes(prior: NDArray[np.float64]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, gm_prior=prior)
    return buffer.getvalue()


def load_scoring_model(directory: Path) -> ScoringModel:
    """Load a model directory written by :func:`build_model`.

    Raises
    ------
    ValueError
        If the GM prior does not match the model's recorded hash (edited or mixed files).
    """
    model, metadata = load_model(directory)
    path = Path(directory) / GM_PRIOR_FILE
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != metadata.extra.get("gm_prior_sha256"):
        raise ValueError(f"{path}: GM prior does not belong to model {metadata.model_version}")
    with np.load(io.BytesIO(data)) as arrays:
        prior = np.asarray(arrays["gm_prior"], dtype=np.float64)
    return ScoringModel(model=model, metadata=metadata, gm_prior=prior)


@dataclass
class _Control:
    key: str
    study_uid: str
    slabs: list[Slab]
    t1_ms: list[NDArray[np.float64]]
    anatomies: list[SlabAnatomy]


def _segment(control: _Control, prior: NDArray[np.float64], n_slabs: int) -> list[SlabAnatomy]:
    return [
        segment_slab(
            t1,
            index=slab.index,
            n_slabs=n_slabs,
            voxel_mm=slab.reference.voxel_mm,
            affine_lps=slab.reference.affine_lps,
            gm_prior_template=prior,
            inv2=slab.inv2.array if slab.inv2 is not None else None,
        )
        for slab, t1 in zip(control.slabs, control.t1_ms, strict=True)
    ]


def _within_cell_spread(
    anatomies: list[SlabAnatomy], t1_maps: list[NDArray[np.float64]]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per template cell: squared deviations of the control's voxels from the cell mean,
    and voxels minus one (the voxel-level noise a cell mean hides)."""
    ss_parts, dof_parts = [], []
    for anatomy, t1 in zip(anatomies, t1_maps, strict=True):
        mask = anatomy.cord & np.isfinite(t1)
        counts = anatomy.coords.template_counts(mask).astype(np.float64)
        mean = np.nan_to_num(anatomy.coords.to_template(t1, mask))
        mean_sq = np.nan_to_num(anatomy.coords.to_template(np.where(mask, t1, 0.0) ** 2, mask))
        ss_parts.append(np.clip(counts * (mean_sq - mean**2), 0.0, None))
        dof_parts.append(np.clip(counts - 1.0, 0.0, None))
    return np.sum(ss_parts, axis=0), np.sum(dof_parts, axis=0)


def _qc_failures(control: _Control) -> tuple[str, ...]:
    """The failed QC rules of a control segmented with any prior (none: usable)."""
    cord_t1 = np.concatenate(
        [t1[a.cord] for a, t1 in zip(control.anatomies, control.t1_ms, strict=True)]
    )
    verdict = assess_exam(
        anatomies=control.anatomies,
        inv2=[s.inv2.array if s.inv2 is not None else None for s in control.slabs],
        foregrounds=[slab_foreground(s) for s in control.slabs],
        outside_lookup_in_cord=float(np.mean(~np.isfinite(cord_t1))) if cord_t1.size else 1.0,
        voxel_mm=[s.reference.voxel_mm for s in control.slabs],
        model_valid=[],
        protocol_matches_model=None,
        b1_corrected=all(s.b1map is not None for s in control.slabs),
    )
    if not any(a.segmentation.found.any() for a in control.anatomies):
        return ("fail: no spinal cord found on any slice",)
    return tuple(r for r in verdict.reasons if r.startswith("fail: "))


def _merge_slabs(templates: list[NDArray[np.float64]]) -> NDArray[np.float64]:
    merged = templates[0].copy()
    for template in templates[1:]:
        merged = np.where(np.isfinite(merged), merged, template)
    return merged


def _load_control(
    exam: ExamSeries, profiles: list[SiteProtocol], pseudonyms: PseudonymKey
) -> tuple[_Control, MP2RAGEProtocol, str]:
    slabs = match_slabs(exam)
    t1_maps = []
    protocol: MP2RAGEProtocol | None = None
    for slab in slabs:
        t1_ms, _info, slab_protocol = slab_t1(slab, profiles)
        if slab_protocol is None:
            raise ExamError(f"control {exam.study_uid}: no UNI series, cannot build a model")
        protocol = slab_protocol
        t1_maps.append(t1_ms)
    assert protocol is not None
    header = slabs[0].reference.datasets[0]
    key = pseudonyms.patient_key(
        str(header.get("IssuerOfPatientID", "")), str(header.get("PatientID", ""))
    )
    protocol_name = str(header.get("ProtocolName", "") or "")
    return _Control(key, exam.study_uid, slabs, t1_maps, []), protocol, protocol_name


def build_model(
    controls_dir: Path,
    out_dir: Path,
    *,
    profiles: list[SiteProtocol],
    created_at: datetime,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    pseudonyms: PseudonymKey | None = None,
) -> ModelMetadata:
    """Build and save a normative model from every exam under ``controls_dir``.

    The metadata lists each control by its keyed pseudonym (``pseudonyms``, the site key);
    without one a random key is drawn for this build, so the listed keys only tell the
    controls apart and cannot be traced back to a PatientID by anyone.

    A control whose QC fails (cord missing on most slices, SNR or lookup-table coverage too
    low) is left out; the model's metadata lists it with the reasons (``extra
    ["excluded_controls"]``).

    Raises
    ------
    ExamError
        If fewer than three controls can be read or pass QC (the message lists the ones left
        out and why), their protocols or slab counts differ, or a control cannot be processed
        (the message names its study UID).
    """
    say = progress or (lambda _msg: None)
    if pseudonyms is None:
        pseudonyms = PseudonymKey(secrets.token_bytes(32))
    exams = find_exam_series(dicom_files(controls_dir))
    if len(exams) < MIN_CONTROLS:
        raise ExamError(
            f"{len(exams)} control exam(s) found in {controls_dir}; at least {MIN_CONTROLS} "
            "are needed for a normative model"
        )
    controls: list[_Control] = []
    reference: tuple[MP2RAGEProtocol, str, int] | None = None
    for study_uid, exam in sorted(exams.items()):
        try:
            control, protocol, protocol_name = _load_control(exam, profiles, pseudonyms)
        except (ExamError, ValueError) as exc:
            raise ExamError(f"control {study_uid}: {exc}") from exc
        n_slabs = len(control.slabs)
        if reference is None:
            reference = (protocol, protocol_name, n_slabs)
        else:
            _check_same_protocol(reference, protocol, n_slabs, study_uid)
        controls.append(control)
        say(f"read control {len(controls)}/{len(exams)}")
    assert reference is not None
    protocol, protocol_name, n_slabs = reference
    keys = [c.key for c in controls]
    if len(set(keys)) != len(keys):
        raise ExamError("a control appears twice (same patient): one exam per control")

    atlas = pam50_gm_prior(n_slabs)
    excluded: dict[str, tuple[str, ...]] = {}
    usable: list[_Control] = []
    for i, control in enumerate(controls, start=1):
        control.anatomies = _segment(control, atlas, n_slabs)
        failures = _qc_failures(control)
        if failures:
            excluded[control.study_uid] = failures
            say(f"left out control {control.study_uid}: QC {'; '.join(failures)}")
            log.warning("control %s left out of the model: QC failed", control.study_uid)
        else:
            usable.append(control)
        say(f"segmented control {i}/{len(controls)} (PAM50 prior)")
    if len(usable) < MIN_CONTROLS:
        listed = "; ".join(f"{uid} ({'; '.join(why)})" for uid, why in excluded.items())
        raise ExamError(
            f"only {len(usable)} of {len(controls)} controls pass QC; at least {MIN_CONTROLS} "
            f"are needed for a normative model. Left out: {listed}"
        )
    controls = usable
    keys = [c.key for c in controls]
    learned = gm_prior_from_controls(
        [(a.coords, a.gm) for c in controls for a in c.anatomies], base_prior=atlas
    )
    t1_templates, masks = [], []
    within_ss, within_dof = [], []
    for i, control in enumerate(controls, start=1):
        control.anatomies = _segment(control, learned, n_slabs)
        template = _merge_slabs(
            [
                a.coords.to_template(t1, a.cord)
                for a, t1 in zip(control.anatomies, control.t1_ms, strict=True)
            ]
        )
        t1_templates.append(template)
        masks.append(np.isfinite(template))
        ss, dof = _within_cell_spread(control.anatomies, control.t1_ms)
        within_ss.append(ss)
        within_dof.append(dof)
        say(f"segmented control {i}/{len(controls)} (learned prior)")
    in_cord = np.hypot(*_uv_grid()) <= 1.0
    gm_cells = (learned >= 0.5) & in_cord[None]
    model = build_normative_model(
        t1_templates,
        masks,
        tissue_maps={"gm": gm_cells, "wm": ~gm_cells},
        smoothing_sigma_vox=SMOOTHING_SIGMA_VOX,
        shrinkage_n0=SHRINKAGE_N0,
    )
    model = with_voxel_noise(model, within_ss, within_dof, smoothing_sigma_vox=SMOOTHING_SIGMA_VOX)
    prior_data = _prior_bytes(learned)
    metadata = ModelMetadata(
        created_at=created_at,
        software_version=__version__,
        protocol=protocol,
        protocol_name=protocol_name,
        controls=tuple(keys),
        template_parameters={
            "n_slabs": n_slabs,
            "shape_uv": list(TEMPLATE_SHAPE_UV),
            "extent_uv": TEMPLATE_EXTENT,
            "z_bins_per_slab": TEMPLATE_Z_BINS_PER_SLAB,
        },
        z_bins_per_slab=TEMPLATE_Z_BINS_PER_SLAB,
        smoothing_sigma_vox=SMOOTHING_SIGMA_VOX,
        shrinkage_n0=SHRINKAGE_N0,
        min_count=MIN_CONTROLS,
        extra={
            "gm_prior_sha256": hashlib.sha256(prior_data).hexdigest(),
            "excluded_controls": [
                {"study_instance_uid": uid, "reasons": list(why)} for uid, why in excluded.items()
            ],
        },
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / GM_PRIOR_FILE).write_bytes(prior_data)
    saved = save_model(model, out_dir, metadata, overwrite=overwrite)
    log.info("normative model %s built from %d controls", saved.model_version, len(controls))
    return saved


def _uv_grid() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    n_u, n_v = TEMPLATE_SHAPE_UV
    cu = (np.arange(n_u) + 0.5) / n_u * 2 * TEMPLATE_EXTENT - TEMPLATE_EXTENT
    cv = (np.arange(n_v) + 0.5) / n_v * 2 * TEMPLATE_EXTENT - TEMPLATE_EXTENT
    uu, vv = np.meshgrid(cu, cv, indexing="ij")
    return uu, vv


def _check_same_protocol(
    reference: tuple[MP2RAGEProtocol, str, int],
    protocol: MP2RAGEProtocol,
    n_slabs: int,
    study_uid: str,
) -> None:
    ref_protocol, ref_name, ref_slabs = reference
    probe = ModelMetadata(
        created_at=datetime.fromisoformat("2000-01-01T00:00:00+00:00"),
        software_version=__version__,
        protocol=ref_protocol,
        protocol_name=ref_name,
        controls=("probe",),
        template_parameters={},
        z_bins_per_slab=TEMPLATE_Z_BINS_PER_SLAB,
        smoothing_sigma_vox=SMOOTHING_SIGMA_VOX,
        shrinkage_n0=SHRINKAGE_N0,
        min_count=MIN_CONTROLS,
    )
    try:
        check_protocol(probe, protocol)
    except ProtocolMismatch as exc:
        raise ExamError(f"control {study_uid} was acquired with another protocol: {exc}") from exc
    if n_slabs != ref_slabs:
        raise ExamError(f"control {study_uid} has {n_slabs} slab(s), the others {ref_slabs}")
