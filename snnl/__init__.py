"""snnl: the Soft Nearest Neighbor Loss, SNNL training, and soft-neighbor OOD detection."""

from snnl.distances import pairwise_distances
from snnl.functional import soft_nearest_neighbor_loss

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "pairwise_distances",
    "soft_nearest_neighbor_loss",
]
