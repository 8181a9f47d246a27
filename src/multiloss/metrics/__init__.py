"""Metrics: segmentation overlap scores; classification scores, intervals, significance, calibration."""
