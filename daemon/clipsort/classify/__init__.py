"""Classify, the third stage.

Class indexes, one module per mode, calibration, review, targets and the live catalog.
"""
