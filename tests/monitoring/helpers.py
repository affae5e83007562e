"""Monitoring test helpers shared by the test modules (fixtures are in conftest.py): free ports, the
tools, the rendered units, the samples of a .prom file, a flipped weight byte."""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from airlock.repo import Repository
from airlock.serving.server import free_port
from tests import support
from tests.fleet.bundles import MODEL
from tests.support import require_tool

AIRLOCK = str(Path(sys.executable).parent / "airlock")
__all__ = ["AIRLOCK", "flip_byte", "free_port", "promtool", "samples", "unit"]


def promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus")


def unit(path: Path) -> configparser.ConfigParser:
    """A systemd unit file, parsed (keys keep their case)."""
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def samples(prom: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(prom.read_text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def flip_byte(repo: Repository) -> Path:
    """Flip one byte in the active version's weight file (as root would; files are 0444)."""
    weights = sorted(repo.layout.version_dir(MODEL, "1.1.0").glob("*.safetensors"))[0]
    support.flip_byte(weights, 100)
    return weights
