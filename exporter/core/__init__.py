"""What every part of the exporter shares: state file, supervision, health, logs, metric definitions."""
