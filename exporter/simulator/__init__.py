"""A WhiteBIT simulator that speaks the documented protocol: REST, WebSocket and webhooks."""
