"""Encode, the second stage.

Files read and decoded within limits, the resident model, vectors and their cache.
"""
