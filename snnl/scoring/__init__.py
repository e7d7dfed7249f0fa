"""Scoring a batch against a reference set: the soft-neighbor scorer, the served temperature
rules, the nonconformity (fit and apply), conformal calibration, input validation, results."""
