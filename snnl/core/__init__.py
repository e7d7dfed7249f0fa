"""Pure tensor math: distances, the SNNL and its masked log-sum-exp, temperatures, kernel sums,
layer taps. Imports nothing else of snnl but ``snnl.errors``."""
