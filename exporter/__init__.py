"""whitebit-exporter: a Prometheus exporter for WhiteBIT accounts and Zero Hash balance webhooks."""

__version__ = "0.1.0"
