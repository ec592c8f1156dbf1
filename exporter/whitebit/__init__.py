"""Everything WhiteBIT: signing, REST, rate limits, pollers, the private WebSocket, transfers and webhooks."""
