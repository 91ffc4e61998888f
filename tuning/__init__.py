"""Offline tuning on recorded answers: replay a pipeline's exact decisions, calibrate its thresholds."""
