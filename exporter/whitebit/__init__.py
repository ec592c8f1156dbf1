"""WhiteBIT protocol pieces shared by the exporter and the simulator."""
