"""Outbound REST calls to the platform's other services (treasury, inventory, logistics,
POS, IoT, projects, notifications), all under one resilience policy (`policy.py`).

`peers.Peers` is what the composition root builds: one typed client per service on one
shared HTTP client. The request and response `Struct`s are our proposal: the integration
guide names each endpoint but not its fields.
"""
