"""The configuration: :mod:`.schema` (what the exporter is told) and :mod:`.load` (reading it from YAML)."""
