"""Headless Chromium for the HTML render tests (.ci/run installs Debian's chromium)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile and without background networking (this
    machine's closed network refuses those connections)."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=90)


def assert_renders(html_file: Path, tmp_path: Path, *, title: str, images: int,
                   window_size: str):
    """The page loads in headless Chromium with `title` and `images` <img> tags in its DOM, and
    a screenshot of it shows drawn plots: matplotlib's tab:blue (#1f77b4, the first series'
    colour) in quantity, not broken-image icons. Returns the screenshot's RGB pixels."""
    import numpy as np
    from matplotlib.image import imread

    dom = chromium("--dump-dom", html_file.as_uri(), profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert title in dom.stdout
    assert dom.stdout.count("<img") == images
    shot = tmp_path / "shot.png"
    result = chromium(f"--window-size={window_size}", f"--screenshot={shot}", html_file.as_uri(),
                      profile=tmp_path / "p2")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    tab_blue = np.all(np.abs(pixels - np.array([0x1F, 0x77, 0xB4]) / 255) < 0.06, axis=-1)
    assert tab_blue.sum() > 500, tab_blue.sum()
    return pixels
