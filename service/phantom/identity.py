"""Deterministic identities, dates and UIDs of phantom subjects (all fictional)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
from pydicom.uid import UID, generate_uid

__all__ = ["SubjectIdentity", "draw_identity", "phantom_uid", "subject_rng"]

#: Fictional names; some need UTF-8 (ISO_IR 192), one uses the three PN component groups.
_NAMES: tuple[tuple[str, str], ...] = (
    ("Phantom^Anna", "F"),
    ("Müller^Jürgen", "M"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "M"),
    ("Dubois^Hélène", "F"),
    ("Test^Bernd", "M"),
    ("Østergård^Søren", "M"),
    ("Sample^Maria", "F"),
    ("Nowak^Zofia Łucja", "F"),
    ("Example^Lukas", "M"),
    ("Suzuki^Hanako=鈴木^花子=すずき^はなこ", "F"),
)

_KIND_CODES = {"control": 1, "patient": 2}


def _digest(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def subject_rng(seed: int, kind: str, index: int, *stream: int) -> np.random.Generator:
    """Random generator of one subject (and sub-stream), independent of cohort size."""
    if kind not in _KIND_CODES:
        raise ValueError(f"kind must be 'control' or 'patient', got {kind!r}")
    return np.random.default_rng([int(seed), _KIND_CODES[kind], int(index), *stream])


def phantom_uid(seed: int, *parts: object) -> UID:
    """UID derived only from the seed and the given parts (same inputs, same UID)."""
    return generate_uid(entropy_srcs=["cordt1-phantom", str(int(seed)), *map(str, parts)])


@dataclass(frozen=True)
class SubjectIdentity:
    """Fictional patient attributes of one subject."""

    subject_id: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    first_exam_date: date
    exam_time: str


def draw_identity(seed: int, kind: str, index: int) -> SubjectIdentity:
    """Name, IDs, sex, birth date (empty for some) and first exam date of a subject.

    Examples
    --------
    >>> draw_identity(1, "control", 1) == draw_identity(1, "control", 1)
    True
    """
    rng = subject_rng(seed, kind, index, 99)
    subject_id = f"{kind}-{index:03d}"
    name, sex = _NAMES[int(rng.integers(len(_NAMES)))]
    patient_id = f"PH{_digest(seed, subject_id) % 10**8:08d}"
    base = date(2022, 1, 3) + timedelta(days=_digest(seed, "base") % 365)
    exam_date = base + timedelta(days=int(rng.integers(0, 300)))
    age_years = int(rng.integers(22, 65))
    birth = exam_date - timedelta(days=365 * age_years + int(rng.integers(0, 365)))
    birth_date = "" if rng.random() < 0.25 else birth.strftime("%Y%m%d")
    hour, minute, second = int(rng.integers(7, 19)), int(rng.integers(60)), int(rng.integers(60))
    return SubjectIdentity(
        subject_id=subject_id,
        patient_name=name,
        patient_id=patient_id,
        birth_date=birth_date,
        sex=sex,
        first_exam_date=exam_date,
        exam_time=f"{hour:02d}{minute:02d}{second:02d}",
    )
