"""The site depot on the warm tier: bundles imported once, staged from by every appliance."""

from airlock.depot.store import Depot, DepotEntry, ImportResult, filesystem_of

__all__ = ["Depot", "DepotEntry", "ImportResult", "filesystem_of"]
