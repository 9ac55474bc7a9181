"""Series that help a slab from their own grid: a B1 map and a T2*-weighted series.

INV1, INV2 and the scanner T1 map are read voxel by voxel with the UNI and must share its grid
(:func:`service.inputs.volumes.same_grid`). A B1 map or a multi-echo GRE is usually acquired on
another grid (coarser, thicker, tilted). It still helps a slab when it lies in the same patient
frame (FrameOfReferenceUID) and covers at least :data:`MIN_COVERAGE` of the slab's reference
grid: it is then resampled in world coordinates (:mod:`processing.resample`), with no
registration. One coarse B1 map commonly covers every slab of an exam.

Why a candidate is not used is said in plain words (the messages name series UIDs only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processing.resample import coverage_fraction, resample_to_grid
from service.inputs.volumes import SeriesVolume, combine_echoes, same_grid

__all__ = [
    "MIN_COVERAGE",
    "PartnerFit",
    "assign_partners",
    "combine_echo_series",
    "describe_grid",
    "partner_fit",
    "partner_on_grid",
]

#: Smallest fraction of a slab's reference voxels a partner on another grid must cover.
MIN_COVERAGE = 0.5

_MAP_IMAGE_TYPES = frozenset({"B1 MAP", "B1MAP", "FLIP ANGLE MAP"})


@dataclass(frozen=True)
class PartnerFit:
    """How one candidate partner fits one slab.

    Attributes
    ----------
    fraction : float
        Fraction of the slab's reference voxels the candidate covers (0..1).
    same_grid : bool
        Whether the candidate samples exactly the reference grid.
    reason : str or None
        Why the candidate cannot be used for this slab; ``None`` when it can.
    """

    fraction: float
    same_grid: bool
    reason: str | None

    @property
    def usable(self) -> bool:
        """Whether the candidate can be used for the slab."""
        return self.reason is None


def describe_grid(volume: SeriesVolume) -> str:
    """Voxel size as a reader says it, in-plane first: ``"3.5 x 3.5 x 5 mm"``.

    Examples
    --------
    >>> from dicom_node.components import Component
    >>> v = SeriesVolume("1.2", Component.B1MAP, np.zeros((2, 2, 2)),
    ...                  np.diag([5.0, 3.5, 3.5, 1.0]), [])
    >>> describe_grid(v)
    '3.5 x 3.5 x 5 mm'
    """
    slice_mm, row_mm, col_mm = volume.voxel_mm
    return " x ".join(f"{v:.3g}" for v in (row_mm, col_mm, slice_mm)) + " mm"


def partner_fit(
    partner: SeriesVolume, reference: SeriesVolume, *, min_coverage: float = MIN_COVERAGE
) -> PartnerFit:
    """Whether ``partner`` can serve the slab whose results are written on ``reference``.

    Parameters
    ----------
    partner : SeriesVolume
        A B1 map or T2*-weighted volume.
    reference : SeriesVolume
        The slab's reference volume (UNI, or the scanner T1 map).
    min_coverage : float
        Smallest covered fraction of the reference grid, in (0, 1].

    Returns
    -------
    PartnerFit
    """
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be within (0, 1], got {min_coverage!r}")
    if same_grid(partner, reference):
        return PartnerFit(1.0, True, None)
    own, theirs = partner.frame_of_reference_uid, reference.frame_of_reference_uid
    if not own or not theirs:
        return PartnerFit(
            0.0,
            False,
            f"series {partner.series_uid} is on another grid and the frame of reference "
            "(FrameOfReferenceUID) of it or of the slab is unknown, so their positions "
            "cannot be related",
        )
    if own != theirs:
        return PartnerFit(
            0.0,
            False,
            f"series {partner.series_uid} lies in another frame of reference "
            "(FrameOfReferenceUID differs from the slab's: the patient was repositioned or "
            "it belongs to another exam)",
        )
    fraction = coverage_fraction(
        partner.array.shape, partner.affine_lps, reference.array.shape, reference.affine_lps
    )
    if fraction < min_coverage:
        return PartnerFit(
            fraction,
            False,
            f"series {partner.series_uid} covers {100 * fraction:.0f} % of the slab "
            f"(at least {100 * min_coverage:.0f} % needed)",
        )
    return PartnerFit(fraction, False, None)


def _names_its_map(volume: SeriesVolume) -> bool:
    """Whether the ImageType says the series is the map itself (not its magnitude image)."""
    if not volume.datasets:
        return False
    value = volume.datasets[0].get("ImageType") or []
    words = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    return any(word.strip().upper() in _MAP_IMAGE_TYPES for word in words)


def assign_partners(
    references: Sequence[SeriesVolume],
    candidates: Sequence[SeriesVolume],
    label: str,
    *,
    min_coverage: float = MIN_COVERAGE,
) -> tuple[list[SeriesVolume | None], list[list[str]]]:
    """Give each slab the candidate covering most of it (a candidate may serve several).

    Ties (e.g. two series on one grid) go to a series whose ImageType names the map, then to
    the one with more echoes, then to the earlier candidate.

    Parameters
    ----------
    references : sequence of SeriesVolume
        The reference volume of each slab.
    candidates : sequence of SeriesVolume
        Every series of one kind (B1 maps, or T2*-weighted volumes) of the exam.
    label : str
        What the candidates are, for the notes (``"B1 map"``).
    min_coverage : float
        See :func:`partner_fit`.

    Returns
    -------
    chosen : list of SeriesVolume or None
        Per slab, the partner or ``None``.
    notes : list of list of str
        Per slab, why no candidate was used (empty when one was, or there was none).
    """
    chosen: list[SeriesVolume | None] = []
    notes: list[list[str]] = []
    for reference in references:
        fits = [(partner_fit(c, reference, min_coverage=min_coverage), c) for c in candidates]
        usable = [(fit, c) for fit, c in fits if fit.usable]
        if usable:
            best = max(
                enumerate(usable),
                key=lambda item: (
                    round(item[1][0].fraction, 6),
                    _names_its_map(item[1][1]),
                    item[1][1].n_echoes,
                    -item[0],
                ),
            )
            chosen.append(best[1][1])
            notes.append([])
        else:
            chosen.append(None)
            notes.append([f"{label} not used: {fit.reason}" for fit, _ in fits])
    return chosen, notes


def combine_echo_series(volumes: Sequence[SeriesVolume]) -> list[SeriesVolume]:
    """Merge one-series-per-echo acquisitions into one volume per grid.

    Volumes on the same grid that each hold one echo, at different echo times, become one
    root-sum-of-squares volume (:func:`service.inputs.volumes.combine_echoes`). Volumes already
    combined (several echoes, or a scanner-combined image without a distinct echo time) are
    kept as they are.

    Parameters
    ----------
    volumes : sequence of SeriesVolume
        T2*-weighted volumes of one exam.

    Returns
    -------
    list of SeriesVolume
        In the order of the first volume of each group.
    """
    groups: list[list[SeriesVolume]] = []
    for volume in volumes:
        for group in groups:
            if same_grid(volume, group[0]):
                group.append(volume)
                break
        else:
            groups.append([volume])
    out: list[SeriesVolume] = []
    for group in groups:
        echoes = [v for v in group if len(v.echo_times_ms) == 1]
        times = [v.echo_times_ms[0] for v in echoes]
        if len(echoes) >= 2 and len(set(times)) == len(times):
            combined = combine_echoes(echoes)
            out.append(combined)
            out.extend(v for v in group if all(v is not e for e in echoes))
        else:
            out.extend(group)
    return out


def partner_on_grid(
    partner: SeriesVolume,
    reference: SeriesVolume,
    *,
    values: NDArray[np.floating] | None = None,
    order: int = 1,
    antialias: bool = True,
    box: tuple[slice, slice, slice] | None = None,
) -> tuple[NDArray[np.float64], float]:
    """A partner's values on the slab's reference grid (or on a box of it).

    Parameters
    ----------
    partner : SeriesVolume
        The partner (same grid, or same frame of reference).
    reference : SeriesVolume
        The slab's reference volume.
    values : ndarray or None
        Values on the partner's grid to use instead of ``partner.array`` (e.g. with invalid
        voxels set to NaN first); NaN voxels get no weight.
    order : int
        0 (nearest) or 1 (trilinear).
    antialias : bool
        Smooth a finer partner to the reference voxel size first (trilinear only).
    box : tuple of slice or None
        Only this box of the reference grid (``[k, j, i]`` slices with unit steps), e.g. the
        cord and its surroundings: the rest of the grid is not computed.

    Returns
    -------
    on_grid : ndarray of float64
        Shape of ``reference.array`` (or of the box); NaN where the partner has no value.
    covered : float
        Fraction of those voxels with a finite value (0..1).

    Raises
    ------
    ValueError
        If ``values`` does not have the partner's shape, or the frames of reference differ.
    """
    source = partner.array if values is None else np.asarray(values)
    if source.shape != partner.array.shape:
        raise ValueError(f"values shape {source.shape} != partner shape {partner.array.shape}")
    shape = reference.array.shape
    box = box or tuple(slice(0, n) for n in shape)
    starts = [b.indices(n)[0] for b, n in zip(box, shape, strict=True)]
    box_shape = tuple(len(range(*b.indices(n))) for b, n in zip(box, shape, strict=True))
    if any(b.step not in (None, 1) for b in box):
        raise ValueError("box slices must have unit steps")
    if same_grid(partner, reference):
        on_grid = np.array(source[box], dtype=np.float64, copy=True)
    else:
        own, theirs = partner.frame_of_reference_uid, reference.frame_of_reference_uid
        if not own or not theirs or own != theirs:
            raise ValueError(
                f"series {partner.series_uid} is not in the frame of reference of series "
                f"{reference.series_uid}: it cannot be resampled onto its grid"
            )
        box_affine = reference.affine_lps.copy()
        box_affine[:3, 3] = (reference.affine_lps @ [*starts, 1.0])[:3]
        on_grid = resample_to_grid(
            source,
            partner.affine_lps,
            box_shape,
            box_affine,
            order=order,
            antialias=antialias,
        )
    return on_grid, float(np.isfinite(on_grid).mean())
