"""Service, at the edge.

The running daemon's wiring and signals, systemd notification, status file and metrics.
"""
