"""The two HTTP listeners: metrics for Prometheus and operators, webhooks for the internet."""
