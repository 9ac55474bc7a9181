"""The viewer test's judges: blank viewport, drawn overlay, probe label."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.ohif_viewer import is_blank, pixel_stats, probe_value


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _mr_like(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = np.clip(rng.normal(110, 40, (200, 300)), 0, 255)
    return np.repeat(grey[:, :, None], 3, axis=2)


def test_a_black_or_flat_viewport_is_blank_and_an_image_is_not() -> None:
    black = np.zeros((200, 300, 3))
    framed = black.copy()
    framed[:2, :] = framed[-2:, :] = (60, 140, 230)  # the active viewport's blue frame
    framed[5:30, 5:90] = 230  # corner text ("W: 4096 L: 2048")
    assert is_blank(pixel_stats(_png(black)))
    assert is_blank(pixel_stats(_png(framed)))
    assert not is_blank(pixel_stats(_png(_mr_like())))


def test_a_coloured_overlay_in_the_centre_counts_and_grey_does_not() -> None:
    grey = _mr_like()
    overlay = grey.copy()
    overlay[80:120, 120:180] = (120, 220, 120)  # a green segment
    muted = grey.copy()
    muted[80:120, 120:180] = (150, 160, 185)  # a muted blue-grey anatomy layer
    edge_only = grey.copy()
    edge_only[:, :10] = (60, 140, 230)  # colour at the border is not an overlay
    assert pixel_stats(_png(grey))["coloured"] == 0.0
    assert pixel_stats(_png(edge_only))["coloured"] == 0.0
    assert pixel_stats(_png(overlay))["coloured"] > 0.1
    assert pixel_stats(_png(muted))["coloured"] > 0.1


def test_probe_labels_give_their_value() -> None:
    assert probe_value("(80, 80, 0)1314") == 1314.0
    assert probe_value("(80, 80, 2) -0.66") == -0.66
    assert probe_value("(3, 4, 5)1250.5 ms") == 1250.5
    assert probe_value("") is None
