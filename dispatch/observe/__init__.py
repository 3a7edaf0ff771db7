"""Observability: Prometheus metrics, the gauges refreshed in the background, structured logging."""
