"""How alike two task descriptions are: one similarity, in [0, 1], for every kind of evidence.

Published trainings and the service's own finished jobs are both compared with a new task through
``similarity``; nothing here knows where a task came from. The similarity is a product of one
factor per aspect, each in [0, 1], so one clear mismatch (another model family, task type or kind
of fine-tuning) is enough to make a training irrelevant:

* model family: 1 when equal; ``FAMILY_AFFINITY`` for related pairs (linear/mlp); 0 otherwise
  ("other" is unknown, so it stays partly similar to everything);
* task type: 1 when equal; ``TASK_TYPE_AFFINITY`` for related pairs; 0 otherwise;
* fine-tuning kind (none, full, parameter-efficient): 1 when equal, ``PARTIAL_FINE_TUNING`` for
  full vs parameter-efficient, 0 between training from scratch and fine-tuning (their lrs lie a
  decade or more apart);
* sparse features: 1 when equal, ``SPARSE_MISMATCH`` otherwise;
* sizes (trainable parameters, batch, depth, dataset): a Gaussian in the log10 ratio,
  ``exp(-(log10(a/b) / width) ** 2 / 2)`` with the width in decades (``SIZE_WIDTHS``); a size
  only one side knows scores ``UNKNOWN_SIZE``.

``weight`` turns a similarity into the weight a piece of evidence carries: 0 at or below
``SIMILARITY_FLOOR`` (dissimilar trainings weigh nothing), rising linearly to 1 for an identical
task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from tuner.task import TaskDescription

FAMILY_AFFINITY: Final[Mapping[frozenset[str], float]] = MappingProxyType({
    frozenset({"linear", "mlp"}): 0.5,
})
OTHER_AFFINITY: Final = 0.3  # "other" (family or task type) against anything else
TASK_TYPE_AFFINITY: Final[Mapping[frozenset[str], float]] = MappingProxyType({
    frozenset({"classification", "regression"}): 0.5,
    frozenset({"language_modeling", "generation"}): 0.5,
})
PARTIAL_FINE_TUNING: Final = 0.3
SPARSE_MISMATCH: Final = 0.3
# Gaussian widths in decades: 10x fewer parameters keeps 0.61 of the similarity, 100x 0.14.
SIZE_WIDTHS: Final[Mapping[str, float]] = MappingProxyType({
    "num_parameters": 1.0, "batch_size": 1.0, "num_layers": 1.0, "dataset_size": 1.5,
})
UNKNOWN_SIZE: Final = 0.9  # a size only one side knows: missing, not different
# Below this similarity a record weighs nothing. The widths, the floor and the evidence strengths
# in tuner.rules were chosen on the published table, leave-one-out: bench/recommend_accuracy.py
# --sweep prints the grid (a floor of 0.8 keeps only close trainings: at 0.3-0.5, half-similar
# ones outvote the rules and top-1 agreement drops from 79% to 74-75%).
SIMILARITY_FLOOR: Final = 0.8


@dataclass(frozen=True)
class TaskKey:
    """What the similarity reads from a task, computed once per task (logs of the sizes)."""

    family: str
    task_type: str
    fine_tuning: str
    sparse: bool
    log_sizes: tuple[float | None, ...]  # aligned with SIZE_WIDTHS

    @property
    def categories(self) -> tuple[str, str, str, bool]:
        return self.family, self.task_type, self.fine_tuning, self.sparse

    @classmethod
    def of(cls, task: TaskDescription) -> TaskKey:
        sizes = (task.num_parameters, task.batch_size, task.num_layers, task.dataset_size)
        return cls(
            task.model_family, task.task_type, task.fine_tuning_kind or "none",
            task.sparse_features,
            tuple(None if s is None else math.log10(s) for s in sizes),
        )


_WIDTHS: Final = tuple(SIZE_WIDTHS.values())


def _affinity(a: str, b: str, pairs: Mapping[frozenset[str], float]) -> float:
    if a == b:
        return 1.0
    if "other" in (a, b):
        return OTHER_AFFINITY
    return pairs.get(frozenset((a, b)), 0.0)


def categorical_similarity(a: TaskKey, b: TaskKey) -> float:
    """The product of the categorical factors (family, task type, fine-tuning kind, sparse):
    an upper bound of the similarity, shared by every task of the same categories."""
    s = _affinity(a.family, b.family, FAMILY_AFFINITY)
    if s == 0.0:
        return 0.0
    s *= _affinity(a.task_type, b.task_type, TASK_TYPE_AFFINITY)
    if a.fine_tuning != b.fine_tuning:
        s *= PARTIAL_FINE_TUNING if "none" not in (a.fine_tuning, b.fine_tuning) else 0.0
    if a.sparse != b.sparse:
        s *= SPARSE_MISMATCH
    return s


def size_similarity(a: TaskKey, b: TaskKey) -> float:
    """The product of the size factors (parameters, batch, depth, dataset)."""
    s = 1.0
    exponent = 0.0
    for x, y, width in zip(a.log_sizes, b.log_sizes, _WIDTHS, strict=True):
        if x is None or y is None:
            if x is not y:
                s *= UNKNOWN_SIZE
        else:
            exponent += ((x - y) / width) ** 2
    return s * math.exp(-0.5 * exponent)


def size_factor(x: float | None, y: float | None, width: float) -> float:
    """One size's factor of ``size_similarity`` on its own (log10 sizes, width in decades)."""
    if x is None or y is None:
        return 1.0 if x is y else UNKNOWN_SIZE
    return math.exp(-0.5 * ((x - y) / width) ** 2)


def size_reach(ceiling: float, floor: float, width: float) -> float:
    """How far (in log10) a size may lie from the task's and a similarity still exceed
    ``floor``, when every other factor together is at most ``ceiling``: the half-width of the
    Gaussian's window, ``width * sqrt(2 ln(ceiling / floor))`` (0 when ``ceiling <= floor``)."""
    if ceiling <= floor:
        return 0.0
    return width * math.sqrt(2.0 * math.log(ceiling / floor))


def key_similarity(a: TaskKey, b: TaskKey) -> float:
    """``similarity`` on precomputed keys."""
    c = categorical_similarity(a, b)
    return 0.0 if c == 0.0 else c * size_similarity(a, b)


def similarity(a: TaskDescription, b: TaskDescription) -> float:
    """How alike two tasks are, in [0, 1] (1: the same description); symmetric."""
    return key_similarity(TaskKey.of(a), TaskKey.of(b))


def weight(similarity: float) -> float:
    """The weight of evidence this similar: 0 up to ``SIMILARITY_FLOOR``, 1 when identical."""
    return max(0.0, (similarity - SIMILARITY_FLOOR) / (1.0 - SIMILARITY_FLOOR))
