"""Training with the SNNL: nets, datasets and splits, ``SNNLoss``, the run directory, the loop."""
