"""Headless Chromium (Debian's package, installed by scripts/setup) for the dashboard's and the attack tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from matplotlib import image


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    assert binary is not None
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=6000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def rendered_dom(url: str, *args: str) -> str:
    """The page's DOM after its scripts ran for a few (virtual) seconds (``args``: more Chromium flags)."""
    return _run(url, "--dump-dom", *args).stdout


def screenshot(url: str, path: Path) -> np.ndarray:
    """A 1280x900 screenshot as an RGB array (0-255)."""
    _run(url, f"--screenshot={path}")
    pixels = image.imread(str(path))[:, :, :3]
    return (pixels * 255).round().astype(int)


def pixels_of(pixels: np.ndarray, hex_color: str, tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` of the colour (per channel)."""
    target = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target) <= tolerance).all(axis=2).sum())
