"""Observability: Airlock's state as Prometheus metrics (node_exporter textfile collector) and the
fleet report (self-contained HTML plus a signed JSON twin). See docs/monitoring.md."""
