"""skselflabel: SeLa self-labelling for scikit-learn and PyTorch."""
from ._version import __version__
from ._solver import SinkhornResult, sinkhorn_knopp
from ._assigner import SinkhornAssigner
from ._clusterer import SelfLabelClusterer
from ._fit.assigner_protocol import Assigner, AssignmentResult
from . import metrics

__all__ = ["__version__", "sinkhorn_knopp", "SinkhornResult", "SinkhornAssigner", "SelfLabelClusterer",
           "Assigner", "AssignmentResult", "metrics"]
