"""optpilot's optimizer library: a registry of torch's optimizers plus its own LAMB, Lion and
schedule-free AdamW/SGD, and learning-rate schedules.

>>> import optimizers
>>> opt = optimizers.create("adamw", params, lr=3e-4, weight_decay=0.1)  # doctest: +SKIP
>>> scheduler = optimizers.build_scheduler(opt, "cosine", total_steps=10_000,
...                                        warmup_fraction=0.05)  # doctest: +SKIP
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
from optimizers.schedulefree_adamw import ScheduleFreeAdamW
from optimizers.schedulefree_sgd import ScheduleFreeSGD
from optimizers.schedules import (
    Schedule,
    ScheduledLR,
    build_scheduler,
    evaluation_mode,
    is_schedule_free,
)

__all__ = [
    "HYPERPARAMETER_BOUNDS",
    "Bound",
    "HyperparameterPrior",
    "Lamb",
    "Lion",
    "OptimizerSpec",
    "Schedule",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "ScheduledLR",
    "SearchRange",
    "build_scheduler",
    "create",
    "evaluation_mode",
    "get",
    "is_schedule_free",
    "names",
    "register",
    "specs",
]
del _catalog
