"""Provisioning a bare Debian/Ubuntu host offline: signed local apt repository, wheelhouse, preflight."""

from __future__ import annotations

from airlock.provision.aptrepo import AptRepo, DebPackage, build_apt_repo, download_closure, verify_apt_repo
from airlock.provision.preflight import Check, PreflightReport, Requirements, run_preflight
from airlock.provision.wheelhouse import build_wheelhouse

__all__ = [
    "AptRepo",
    "Check",
    "DebPackage",
    "PreflightReport",
    "Requirements",
    "build_apt_repo",
    "build_wheelhouse",
    "download_closure",
    "run_preflight",
    "verify_apt_repo",
]
