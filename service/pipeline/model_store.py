"""Save and load versioned normative models.

A model directory holds ``arrays.npz`` (mean, SD and count on the template grid) and
``model.json`` (format, version metadata, pooled tissue SDs). ``model_version`` is a content
hash of the arrays and of every metadata field except ``created_at``, so rebuilding the same
model from the same controls with the same software gives the same version, and any change of
data, controls, protocol or parameters gives a new one. ``model.json`` is written last: a
directory without it holds no model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from processing.mp2rage import MP2RAGEProtocol
from processing.normative import NormativeModel

__all__ = [
    "ARRAYS_FILE",
    "METADATA_FILE",
    "ModelMetadata",
    "ProtocolMismatch",
    "check_protocol",
    "compute_model_version",
    "load_model",
    "save_model",
]

FORMAT_NAME = "cordt1-normative-model"
FORMAT_VERSION = 1
ARRAYS_FILE = "arrays.npz"
METADATA_FILE = "model.json"
_ARRAY_NAMES = ("mean_ms", "sd_ms", "count")


class ProtocolMismatch(ValueError):  # noqa: N818 (name fixed by the design)
    """The exam's MP2RAGE protocol is not the one the normative model was built for."""

    def __init__(self, message: str, differences: tuple[str, ...]) -> None:
        super().__init__(message)
        self.differences = differences


@dataclass(frozen=True)
class ModelMetadata:
    """Who, what and how of one normative model.

    Parameters
    ----------
    created_at : datetime
        Build time, timezone-aware (passed in by the caller; not part of the version hash).
    software_version : str
        Version of the software that built the model.
    protocol : MP2RAGEProtocol
        The acquisition protocol of every control.
    protocol_name : str
        The scanner's ProtocolName of that acquisition.
    controls : tuple of str
        Pseudonymous keys of the controls (hashed patient keys or study UIDs; never names).
    template_parameters : mapping
        JSON-serialisable template settings (grid shape, u/v extent, slab coverage...).
    z_bins_per_slab : int
        Template bins along the cord per slab.
    smoothing_sigma_vox : float or tuple of float
        Gaussian sigma used to build the model (template cells).
    shrinkage_n0 : float
        Pseudo-observations of the pooled tissue SD.
    min_count : int
        Fewest controls per valid cell.
    model_version : str
        Content hash; empty until :func:`save_model` fills it in.

    Raises
    ------
    ValueError
        If a field is empty, inconsistent or not JSON-serialisable.
    """

    created_at: datetime
    software_version: str
    protocol: MP2RAGEProtocol
    protocol_name: str
    controls: tuple[str, ...]
    template_parameters: Mapping[str, Any]
    z_bins_per_slab: int
    smoothing_sigma_vox: float | tuple[float, ...]
    shrinkage_n0: float
    min_count: int
    model_version: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.created_at, datetime) or self.created_at.tzinfo is None:
            raise ValueError("created_at must be a timezone-aware datetime")
        if not self.software_version:
            raise ValueError("software_version must not be empty")
        if not isinstance(self.protocol, MP2RAGEProtocol):
            raise TypeError(f"protocol must be an MP2RAGEProtocol, got {type(self.protocol)}")
        controls = tuple(str(c) for c in self.controls)
        if not controls or any(not c for c in controls):
            raise ValueError("controls must list at least one non-empty key")
        if len(set(controls)) != len(controls):
            raise ValueError("controls must not repeat a key")
        object.__setattr__(self, "controls", controls)
        if int(self.z_bins_per_slab) != self.z_bins_per_slab or self.z_bins_per_slab < 1:
            raise ValueError(f"z_bins_per_slab must be a positive integer: {self.z_bins_per_slab}")
        if int(self.min_count) != self.min_count or self.min_count < 2:
            raise ValueError(f"min_count must be an integer >= 2, got {self.min_count!r}")
        if not math.isfinite(self.shrinkage_n0) or self.shrinkage_n0 < 0:
            raise ValueError(f"shrinkage_n0 must be >= 0, got {self.shrinkage_n0!r}")
        if isinstance(self.smoothing_sigma_vox, list | tuple):
            object.__setattr__(
                self, "smoothing_sigma_vox", tuple(float(s) for s in self.smoothing_sigma_vox)
            )
        for name in ("template_parameters", "extra"):
            value = dict(getattr(self, name))
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be JSON-serialisable: {exc}") from exc
            object.__setattr__(self, name, value)

    @property
    def n_controls(self) -> int:
        """Number of controls in the model."""
        return len(self.controls)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary (``created_at`` as ISO 8601)."""
        return {
            "model_version": self.model_version,
            "created_at": self.created_at.isoformat(),
            "software_version": self.software_version,
            "protocol_name": self.protocol_name,
            "protocol": dataclasses.asdict(self.protocol),
            "controls": list(self.controls),
            "n_controls": self.n_controls,
            "template_parameters": dict(self.template_parameters),
            "z_bins_per_slab": int(self.z_bins_per_slab),
            "smoothing_sigma_vox": (
                list(self.smoothing_sigma_vox)
                if isinstance(self.smoothing_sigma_vox, tuple)
                else float(self.smoothing_sigma_vox)
            ),
            "shrinkage_n0": float(self.shrinkage_n0),
            "min_count": int(self.min_count),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetadata:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        ValueError
            If a key is missing or ``n_controls`` disagrees with ``controls``.
        """
        try:
            sigma = data["smoothing_sigma_vox"]
            metadata = cls(
                created_at=datetime.fromisoformat(data["created_at"]),
                software_version=data["software_version"],
                protocol=MP2RAGEProtocol(**data["protocol"]),
                protocol_name=data["protocol_name"],
                controls=tuple(data["controls"]),
                template_parameters=data["template_parameters"],
                z_bins_per_slab=data["z_bins_per_slab"],
                smoothing_sigma_vox=tuple(sigma) if isinstance(sigma, list) else sigma,
                shrinkage_n0=data["shrinkage_n0"],
                min_count=data["min_count"],
                model_version=data["model_version"],
                extra=data.get("extra", {}),
            )
        except KeyError as exc:
            raise ValueError(f"model metadata lacks the key {exc.args[0]!r}") from exc
        if data.get("n_controls", metadata.n_controls) != metadata.n_controls:
            raise ValueError(
                f"model metadata says n_controls={data['n_controls']} but lists "
                f"{metadata.n_controls} controls"
            )
        return metadata


def _arrays(model: NormativeModel) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(getattr(model, name)) for name in _ARRAY_NAMES}


def compute_model_version(model: NormativeModel, metadata: ModelMetadata) -> str:
    """Content hash of a model: arrays, pooled SDs and metadata except ``created_at``.

    Returns
    -------
    str
        ``"nm-"`` followed by the first 16 hex digits of a SHA-256.
    """
    digest = hashlib.sha256()
    described = metadata.to_json()
    for volatile in ("model_version", "created_at"):
        described.pop(volatile)
    described["tissue_sd_ms"] = {k: model.tissue_sd_ms[k] for k in sorted(model.tissue_sd_ms)}
    digest.update(json.dumps(described, sort_keys=True, allow_nan=False).encode())
    for name, array in _arrays(model).items():
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return "nm-" + digest.hexdigest()[:16]


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_model(
    model: NormativeModel,
    directory: str | os.PathLike[str],
    metadata: ModelMetadata,
    *,
    overwrite: bool = False,
) -> ModelMetadata:
    """Write a model and its metadata into ``directory`` (created if needed).

    Parameters
    ----------
    model : NormativeModel
    directory : path
    metadata : ModelMetadata
        ``model_version`` may be empty; it is computed here.
    overwrite : bool
        Replace an existing model in ``directory``.

    Returns
    -------
    ModelMetadata
        ``metadata`` with ``model_version`` set to the content hash.

    Raises
    ------
    FileExistsError
        If ``directory`` already holds a model and ``overwrite`` is false.
    ValueError
        If ``metadata.model_version`` is set but is not the content hash, or the model has
        cells counted by more controls than the metadata lists.
    """
    max_count = int(model.count.max()) if model.count.size else 0
    if max_count > metadata.n_controls:
        raise ValueError(
            f"model cells are covered by {max_count} controls but the metadata lists "
            f"{metadata.n_controls}"
        )
    version = compute_model_version(model, metadata)
    if metadata.model_version and metadata.model_version != version:
        raise ValueError(
            f"metadata.model_version {metadata.model_version!r} is not the content hash "
            f"{version!r}"
        )
    metadata = dataclasses.replace(metadata, model_version=version)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / METADATA_FILE
    if json_path.exists() and not overwrite:
        raise FileExistsError(f"{folder} already holds a normative model")
    document = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **metadata.to_json(),
        "tissue_sd_ms": dict(model.tissue_sd_ms),
        "arrays_file": ARRAYS_FILE,
    }
    text = json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"
    if json_path.exists():
        json_path.unlink()  # a directory without model.json holds no model while we rewrite
    _write_atomic(folder / ARRAYS_FILE, lambda fh: np.savez(fh, **_arrays(model)))
    _write_atomic(json_path, lambda fh: fh.write(text.encode()))
    return metadata


def load_model(directory: str | os.PathLike[str]) -> tuple[NormativeModel, ModelMetadata]:
    """Read a model written by :func:`save_model` and check its content hash.

    Raises
    ------
    FileNotFoundError
        If ``directory`` holds no model.
    ValueError
        If the format is unknown, an array is missing, or the content does not match
        ``model_version`` (corrupted or edited files).
    """
    folder = Path(directory)
    json_path = folder / METADATA_FILE
    if not json_path.is_file():
        raise FileNotFoundError(f"no normative model in {folder} ({METADATA_FILE} missing)")
    document = json.loads(json_path.read_text())
    if document.get("format") != FORMAT_NAME or document.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{json_path} is not a {FORMAT_NAME} version {FORMAT_VERSION} file "
            f"(format {document.get('format')!r}, version {document.get('format_version')!r})"
        )
    metadata = ModelMetadata.from_json(document)
    with np.load(folder / document.get("arrays_file", ARRAYS_FILE), allow_pickle=False) as npz:
        missing = [name for name in _ARRAY_NAMES if name not in npz.files]
        if missing:
            raise ValueError(f"{folder / ARRAYS_FILE} lacks the arrays {missing}")
        arrays = {name: npz[name] for name in _ARRAY_NAMES}
    model = NormativeModel(**arrays, tissue_sd_ms=dict(document["tissue_sd_ms"]))
    actual = compute_model_version(model, metadata)
    if actual != metadata.model_version:
        raise ValueError(
            f"normative model in {folder} does not match its version "
            f"{metadata.model_version!r} (content hash {actual!r}): files changed or corrupted"
        )
    return model, metadata


_COMPARED = (
    ("tr_mp2rage_s", "TR_MP2RAGE", 1000.0, "ms"),
    ("ti1_s", "TI1", 1000.0, "ms"),
    ("ti2_s", "TI2", 1000.0, "ms"),
    ("flip1_deg", "flip angle 1", 1.0, "deg"),
    ("flip2_deg", "flip angle 2", 1.0, "deg"),
    ("echo_spacing_s", "echo spacing", 1000.0, "ms"),
)


def check_protocol(
    metadata: ModelMetadata, protocol: MP2RAGEProtocol, *, rel_tol: float = 0.01
) -> None:
    """Refuse an exam whose MP2RAGE protocol is not the model's.

    Compares TR_MP2RAGE, TI1, TI2, both flip angles and the echo spacing (relative tolerance
    ``rel_tol``), and the excitations per block and before the k-space centre (exactly).
    The inversion efficiency is a property of the pulse assumed for the lookup, not an
    acquisition setting, and is not compared.

    Raises
    ------
    ProtocolMismatch
        Naming every differing value with the exam's and the model's numbers.
    ValueError
        If ``rel_tol`` is negative.
    """
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol!r}")
    model = metadata.protocol
    differences: list[str] = []
    for attribute, label, scale, unit in _COMPARED:
        exam_value = getattr(protocol, attribute)
        model_value = getattr(model, attribute)
        if not math.isclose(exam_value, model_value, rel_tol=rel_tol):
            differences.append(
                f"{label} {exam_value * scale:g} {unit} (exam) vs {model_value * scale:g} {unit} "
                "(model)"
            )
    if protocol.n_excitations != model.n_excitations:
        differences.append(
            f"excitations per block {protocol.n_excitations} (exam) vs "
            f"{model.n_excitations} (model)"
        )
    elif protocol.n_before != model.n_before:
        differences.append(
            f"excitations before the k-space centre {protocol.n_before} (exam) vs "
            f"{model.n_before} (model)"
        )
    if differences:
        raise ProtocolMismatch(
            f"exam protocol differs from normative model {metadata.model_version or '?'} "
            f"(protocol {metadata.protocol_name!r}): " + "; ".join(differences),
            tuple(differences),
        )
