"""`make demo`: the whole Airlock journey on an embedded default (a local fleet of three hosts)."""
