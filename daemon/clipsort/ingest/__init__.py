"""Ingest, the first stage.

Which inbox files are there and ready (watcher hints, scanner truth, readiness, the fair bounded
queue).
"""
