"""The balanced assignment: Sinkhorn-Knopp, its compiled sweep, sized labels and priors."""
from .sinkhorn import SinkhornResult, sinkhorn_knopp, solve

__all__ = ["SinkhornResult", "sinkhorn_knopp", "solve"]
