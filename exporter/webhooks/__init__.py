"""Webhook receivers: WhiteBIT (:mod:`.whitebit`) and Zero Hash (:mod:`.zerohash`).

Each receiver verifies a delivery over its raw bytes before parsing anything, commits what it
learned (delivery id, nonce, transfer or balance) to the state file in one transaction, and only
then answers 200. Its counters are rendered by a collector from the receiver's own counts.
"""
