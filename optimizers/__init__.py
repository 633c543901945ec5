"""optpilot's optimizer library: a registry of torch's optimizers plus its own LAMB and Lion.

>>> import optimizers
>>> opt = optimizers.create("adamw", params, lr=3e-4, weight_decay=0.1)  # doctest: +SKIP
"""

from optimizers import catalog as _catalog  # registers the built-ins
from optimizers.lamb import Lamb
from optimizers.lion import Lion
from optimizers.registry import (
    HYPERPARAMETER_BOUNDS,
    Bound,
    HyperparameterPrior,
    OptimizerSpec,
    SearchRange,
    create,
    get,
    names,
    register,
    specs,
)

__all__ = [
    "HYPERPARAMETER_BOUNDS",
    "Bound",
    "HyperparameterPrior",
    "Lamb",
    "Lion",
    "OptimizerSpec",
    "SearchRange",
    "create",
    "get",
    "names",
    "register",
    "specs",
]
del _catalog
