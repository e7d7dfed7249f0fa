"""Evaluation: OOD baselines and metrics, OOD sets, embedding evaluation, the OOD benchmark of
``snnl evaluate`` and its reports."""
