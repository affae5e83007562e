"""Fleet operations over ansible-runner: playbooks driven from Python with per-batch and per-host
progress from runner events, secrets in ``env/extravars`` (0600), never on a command line."""

from airlock.fleet.events import Batch, EventTracker, HostSummary
from airlock.fleet.runner import PLAYBOOKS, FleetResult, Vault, content_dir, run_playbook

__all__ = ["PLAYBOOKS", "Batch", "EventTracker", "FleetResult", "HostSummary", "Vault", "content_dir",
           "run_playbook"]
