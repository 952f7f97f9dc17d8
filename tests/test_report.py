"""expman compare --html: one self-contained report, checked in headless Chromium."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.cli import expman
from tests.conftest import require_tool

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium(tmp_path: Path, *args: str) -> str:
    browser = require_tool("chromium", "chromium-browser", install="apt-get install chromium")
    result = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


@pytest.fixture
def report(two_variants: Path, tmp_path: Path) -> Path:
    path = tmp_path / "report.html"
    result = expman(two_variants, "compare", "base", "wide", "--html", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.endswith(f"expman: wrote {path}\n")
    return path


def test_the_report_is_self_contained(report: Path) -> None:
    html = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html
    assert "<link" not in html


def test_chromium_shows_the_comparison(report: Path, tmp_path: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", report.as_uri())
    text = re.sub(r"<[^>]+>", " ", dom)
    words = " ".join(text.split())
    assert "expman compare: base vs wide" in words
    assert "model.hidden_units [10, 10] [20, 20]" in words
    assert "loss (lower is better) 0.03333 (0.03333) ★ 0.1 (0.1)" in words
    assert "dnn/hiddenlayer_0/kernel reshaped [4, 10] float32 [4, 20] float32" in words
    assert "expman.toml | 2 +-" in words
    assert "1 succeeded, 2 succeeded" in words
    # One chart per logged metric, one curve per variant.
    assert dom.count("<figure>") == 2
    assert len(re.findall(r'<polyline data-variant="base"', dom)) == 2
    assert len(re.findall(r'<polyline data-variant="wide"', dom)) == 2


def test_screenshot(report: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1200,1800", f"--screenshot={screenshot}", report.as_uri())
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a rendered page, not a blank one
