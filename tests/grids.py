"""Test helpers: voxel grids (4x4 affines, ``[k, j, i, 1]`` -> LPS mm) and their points."""

from __future__ import annotations

import numpy as np


def tilted_affine(
    voxel_mm: tuple[float, float, float],
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    tilt_deg: float = 0.0,
) -> np.ndarray:
    """Axial-like grid (k along z, j along y, i along x), tilted about x by ``tilt_deg``."""
    t = np.deg2rad(tilt_deg)
    rotation = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    axes = rotation @ np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = axes * np.asarray(voxel_mm)
    affine[:3, 3] = origin_mm
    return affine


def world_mm(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Patient coordinates (mm) of every voxel centre, shape ``(*shape, 3)``."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    return (np.stack([k, j, i, np.ones_like(k)], axis=-1) @ affine.T)[..., :3]
