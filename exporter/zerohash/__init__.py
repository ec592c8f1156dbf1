"""Everything Zero Hash: webhook signatures, the balance aggregation and the webhook receiver."""
