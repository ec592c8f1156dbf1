"""The private WebSocket of a WhiteBIT account: the connection, its frames and the open orders."""
