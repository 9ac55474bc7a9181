"""Test helpers: Orthanc with DICOMweb, the OHIF viewer behind ohif_proxy.py, and Chromium.

The same pieces a site uses from ``deploy/viewer/``: an Orthanc with the DICOMweb plugin, the
prebuilt OHIF ``dist/`` (installed by ``scripts/bootstrap.sh`` into ``.cache/ohif/<version>``)
served with ``deploy/viewer/app-config.js`` by ``deploy/viewer/ohif_proxy.py`` on one origin,
and the system Chromium driven by Playwright (no browser download).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.phantom.pacs import OrthancPacs, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
OHIF_VERSION = "3.13.2"
VIEWER_DIR = ROOT / "deploy" / "viewer"
CHROMIUM = "/usr/bin/chromium"
# what OHIF logs when an SR measurement group has no image coordinates, and when it crashes
SR_WITHOUT_COORDINATES = ("No spatial coordinates group found", "contains no SCOORD or SCOORD3D")
PAGE_ERROR = "uncaught exception: "
ERROR_BOUNDARY = ("Error Boundary", "Something went wrong")
JPEG_QUALITY = 80
# OHIF's first-visit tour and investigational-use banner, marked as seen (as after a reader's
# first visit): the tour's overlay would otherwise catch clicks whenever it shows up late
# (top frame only: the PDF's frame has no storage)
SEEN_NOTICES = """
try {
  if (window.top === window && window.localStorage) {
    localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
    localStorage.setItem('investigationalUseDialog',
        JSON.stringify({expiryDate: new Date(Date.now() + 86400000)}));
  }
} catch (e) {}
"""
THUMBNAILS = '[data-cy="study-browser-thumbnail"], [data-cy="study-browser-thumbnail-no-image"]'


def ohif_dist() -> Path:
    """The OHIF ``dist/`` folder (``$CORDT1_OHIF_DIST`` or the bootstrap's cache)."""
    configured = os.environ.get("CORDT1_OHIF_DIST")
    return Path(configured) if configured else ROOT / ".cache" / "ohif" / OHIF_VERSION / "dist"


@dataclass
class ViewerStack:
    """A throw-away Orthanc (DICOMweb on) and the same-origin viewer server in front of it."""

    pacs: OrthancPacs
    proxy: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        """Root of the viewer (the study list)."""
        return f"http://127.0.0.1:{self.port}/"

    def viewer_url(self, study_uid: str) -> str:
        """The basic viewer opened on one study."""
        return f"{self.url}viewer?StudyInstanceUIDs={study_uid}"


@contextmanager
def viewer_stack(folder: Path, files: list[Path]) -> Iterator[ViewerStack]:
    """Start Orthanc with DICOMweb, store ``files`` in it, serve OHIF in front of it."""
    dist = ohif_dist()
    assert (dist / "index.html").is_file(), (
        f"OHIF viewer missing at {dist} (scripts/bootstrap.sh installs @ohif/app {OHIF_VERSION})"
    )
    pacs = OrthancPacs.start(folder / "orthanc", dicomweb=True)
    proxy: subprocess.Popen[bytes] | None = None
    try:
        pacs.upload(files)
        port = free_port()
        log = (folder / "ohif_proxy.log").open("ab")
        proxy = subprocess.Popen(
            [
                sys.executable,
                str(VIEWER_DIR / "ohif_proxy.py"),
                "--dist",
                str(dist),
                "--app-config",
                str(VIEWER_DIR / "app-config.js"),
                "--orthanc",
                f"http://127.0.0.1:{pacs.http_port}",
                "--orthanc-user",
                pacs.user,
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ORTHANC_PASSWORD": pacs.password},
        )
        wait_for_port(port, timeout_s=20)
        yield ViewerStack(pacs=pacs, proxy=proxy, port=port)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        pacs.stop()


def pixel_stats(png: bytes) -> dict[str, float]:
    """Grey-level spread and coloured share of the central 60 % of a screenshot.

    The centre leaves out the blue frame of the active viewport and the corner texts, which a
    viewport shows even when it draws nothing. ``std`` is the standard deviation of the grey
    levels (0 when uniform), ``busy`` the share of pixels differing from the most common grey
    level by more than 10, ``coloured`` the share of coloured pixels (max - min channel > 20,
    so muted layer colours count too), which a grey MR image does not have and a segmentation
    overlay does.
    """
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    rows, columns = rgb.shape[:2]
    centre = rgb[int(rows * 0.2) : int(rows * 0.8), int(columns * 0.2) : int(columns * 0.8)]
    grey = centre.mean(axis=2)
    values, counts = np.unique(np.round(grey).astype(int), return_counts=True)
    mode = values[np.argmax(counts)]
    chroma = centre.max(axis=2) - centre.min(axis=2)
    return {
        "std": float(grey.std()),
        "busy": float(np.mean(np.abs(grey - mode) > 10)),
        "coloured": float(np.mean(chroma > 20)),
    }


def is_blank(stats: dict[str, float]) -> bool:
    """A viewport showing nothing: (almost) one grey level everywhere."""
    return stats["std"] < 4.0 or stats["busy"] < 0.01


@dataclass
class OhifPage:
    """One Chromium page on the viewer, with what the viewer logged."""

    page: Any
    shots: Path
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def attach(self) -> OhifPage:
        """Record console messages and uncaught page errors."""
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", self._page_error)
        return self

    def _page_error(self, error: object) -> None:
        self.page_errors.append(str(error))
        self.console.append(f"{PAGE_ERROR}{error}")

    def since(self, mark: int) -> list[str]:
        """Console lines logged after ``mark`` (a former ``len(console)``)."""
        return self.console[mark:]

    def viewer_errors(self, mark: int = 0) -> list[str]:
        """Error boundaries, uncaught exceptions and error dialogs since ``mark``."""
        found = [
            line
            for line in self.since(mark)
            if line.startswith(PAGE_ERROR) or any(e in line for e in ERROR_BOUNDARY)
        ]
        body = self.page.inner_text("body")
        found += [f"on screen: {e}" for e in ERROR_BOUNDARY if e in body]
        return found

    def dismiss_notices(self) -> None:
        """Close the investigational-use banner and the first-visit tour, when shown."""
        for name in ("Skip all", "Confirm and hide"):
            button = self.page.get_by_role("button", name=name, exact=True)
            if button.count():
                button.first.click()

    def open_viewer(self, url: str) -> None:
        """Go to the viewer; wait until the series are listed and the first one is drawn."""
        self.page.goto(url)
        self.page.locator(THUMBNAILS).first.wait_for(timeout=60_000)
        self.dismiss_notices()
        self.wait_for_image()

    def wait_for_image(self, timeout_ms: int = 15_000) -> bool:
        """Wait until the viewport shows something; False if it stayed blank."""
        waited = 0
        while waited < timeout_ms:
            box = self.viewport().bounding_box()
            if box and not is_blank(pixel_stats(self.page.screenshot(clip=box))):
                return True
            self.page.wait_for_timeout(500)
            waited += 500
        return False

    def thumbnail_series_numbers(self) -> set[int]:
        """Series numbers of the study browser's thumbnails."""
        script = "els => els.map(e => e.getAttribute('data-series'))"
        numbers = self.page.eval_on_selector_all(THUMBNAILS, script)
        return {int(n) for n in numbers if n and n.isdigit()}

    def thumbnail_descriptions(self) -> dict[int, str]:
        """Series description shown on each thumbnail, by series number."""
        script = """els => els.map(e => [e.getAttribute('data-series'),
            (e.querySelector('[data-cy="series-description-label"]') || e).textContent])"""
        pairs = self.page.eval_on_selector_all(THUMBNAILS, script)
        return {int(n): str(text).strip() for n, text in pairs if n and n.isdigit()}

    def open_series(self, series_number: int, *, settle_ms: int = 4000) -> None:
        """Double-click the series' thumbnail to show it in the viewport."""
        selector = ", ".join(f'{t}[data-series="{series_number}"]' for t in THUMBNAILS.split(", "))
        self.page.locator(selector).first.dblclick()
        self.page.wait_for_timeout(settle_ms)

    def click_button(self, name: str, *, wait_ms: int = 15_000, settle_ms: int = 3000) -> bool:
        """Click a button by its text once it shows (up to ``wait_ms``); False if it never did."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        button = self.page.get_by_role("button", name=name, exact=True).first
        try:
            button.wait_for(state="visible", timeout=wait_ms)
        except PlaywrightTimeout:
            return False
        button.click()
        self.page.wait_for_timeout(settle_ms)
        return True

    def viewport(self) -> Any:
        """The (first) viewport pane."""
        return self.page.locator('[data-cy="viewport-pane"]').first

    def viewport_shot(self, name: str) -> tuple[Path, dict[str, float]]:
        """Screenshot of the viewport pane (kept as JPEG) with its pixel statistics.

        The page is shot clipped to the pane's box: an element shot waits for the element to be
        still, which a viewport re-rendering in software may not be for many seconds.
        """
        box = self.viewport().bounding_box()
        assert box, "no viewport on the page"
        png = self.page.screenshot(clip=box)
        path = self.shots / f"{name}.jpg"
        Image.open(io.BytesIO(png)).convert("RGB").save(path, quality=JPEG_QUALITY)
        return path, pixel_stats(png)

    def viewport_shot_when(
        self,
        name: str,
        ready: Callable[[dict[str, float]], bool],
        *,
        timeout_ms: int = 15_000,
    ) -> tuple[Path, dict[str, float]]:
        """Shoot the viewport until ``ready(stats)`` holds or ``timeout_ms`` passed; the last shot.

        Rendering in software on a busy machine takes a while: waiting for what the test looks
        for (an image, an overlay) instead of a fixed time keeps the test from flaking.
        """
        waited = 0
        while True:
            shot, stats = self.viewport_shot(name)
            if ready(stats) or waited >= timeout_ms:
                return shot, stats
            self.page.wait_for_timeout(1000)
            waited += 1000

    def page_shot(self, name: str) -> Path:
        """Screenshot of the whole page (JPEG)."""
        path = self.shots / f"{name}.jpg"
        self.page.screenshot(path=path, type="jpeg", quality=JPEG_QUALITY)
        return path

    def overlay_text(self) -> str:
        """The viewport's corner overlays (series description, window, image number)."""
        parts = self.page.locator('[data-cy^="viewport-overlay-"]').all_inner_texts()
        return "\n".join(parts)

    def annotation_texts(self) -> dict[str, str]:
        """Text of every rendered annotation label, by annotation UID."""
        script = """els => els.map(e => [e.getAttribute('data-annotation-uid'), e.textContent])"""
        pairs = self.page.eval_on_selector_all("[data-annotation-uid]", script)
        out: dict[str, str] = {}
        for uid, text in pairs:
            out[uid] = (out.get(uid, "") + " " + (text or "")).strip()
        return out

    def open_segmentation_panel(self) -> str:
        """Open the right-hand segmentation panel and return its text."""
        panel = self.page.locator('[data-cy="panelSegmentation-btn"]').first
        panel.click()
        self.page.wait_for_timeout(1500)
        return str(self.page.inner_text("body"))

    def probe(self, row: int, column: int, shape: tuple[int, int]) -> str:
        """Place a Probe on pixel (row, column) of an image of ``shape``; its label text.

        A stack viewport shows the image centred and fitted to the canvas (square pixels), so
        the pixel's screen position follows from the canvas box without calibration.
        """
        self.page.locator('[data-cy="MoreTools-split-button-secondary"]').first.click()
        self.page.get_by_text("Probe", exact=True).first.click()
        self.page.wait_for_timeout(500)
        canvas = self.viewport().locator("canvas").first
        box = canvas.bounding_box()
        assert box, "viewport has no canvas"
        before = set(self.annotation_texts())
        rows, columns = shape
        scale = min(box["width"] / columns, box["height"] / rows)
        x = box["x"] + box["width"] / 2 + (column + 0.5 - columns / 2) * scale
        y = box["y"] + box["height"] / 2 + (row + 0.5 - rows / 2) * scale
        self.page.mouse.click(x, y)
        self.page.wait_for_timeout(1000)
        texts = self.annotation_texts()
        new = [texts[uid] for uid in texts if uid not in before]
        return new[0] if new else ""


def probe_value(label: str) -> float | None:
    """The pixel value in a Probe label such as ``"(80, 80, 0)1314"`` or ``"... 1314 ms"``."""
    match = re.search(r"\)\s*(-?\d+(?:\.\d+)?)", label)
    return float(match.group(1)) if match else None


@contextmanager
def chromium_page(shots: Path) -> Iterator[OhifPage]:
    """The system Chromium, headless, one 1280x800 page."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium missing (Debian package 'chromium')"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(30_000)
            page.add_init_script(SEEN_NOTICES)
            yield OhifPage(page=page, shots=shots).attach()
        finally:
            browser.close()
