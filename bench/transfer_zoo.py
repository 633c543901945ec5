"""The zoo of related generated tasks behind ``bench/transfer.py`` (issue #17).

Sixteen small workloads in four families, each the built-in workload of its family
(``tuner.workloads.builtin``) with its width, batch size and dataset size as parameters:

* ``mlp``: ``DigitsMLP`` (one hidden layer) on scikit-learn's 8x8 digits;
* ``cnn``: three 3x3 convolutions (``c``, ``2c``, ``2c`` channels, global average pooling) on the
  same digits, in place of ``DigitsCNN``'s fixed widths;
* ``rnn``: ``SequenceLSTM`` (embedding and hidden of the same width) on its generated "is token
  ``a`` ever followed by ``b``" sequences, shortened;
* ``transformer``: ``TinyTransformer`` (2 layers) on its generated "Markov prefix, SEP, copy"
  sequences, shortened.

Per family four tasks: sizes x1, x4 and x16 (the width grows, the depth stays, so the trainable
parameters grow about 4x per step) at one batch size and dataset size, and the x4 size again with
twice the batch and half the data. Neighbouring sizes of a family are similar enough to count as
evidence for each other (``tuner.evidence.similarity``: 0.83-0.87 for about 4x the parameters,
0.94 between the variant and x4, 0.80-0.81 between the variant and x1; nothing at or below 0.8
weighs anything), x1 and x16 are not, and no two families are: every task has at least one
neighbour in the history of the others. Data ship with scikit-learn or are generated from a
fixed seed: nothing is downloaded. Every trial takes 0.05-0.8 s on one CPU thread.

Each task's ``TaskDescription`` is read from the model it trains (``count_parameters``), with its
depth, dataset size and batch size. The zoo's workloads are not registered: ``zoo_workload(name)``
builds one (once per process).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from tuner.task import TaskDescription
from tuner.workloads import Workload
from tuner.workloads.builtin import (
    DIGITS_TRAIN,
    DigitsCNN,
    DigitsMLP,
    SequenceLSTM,
    TinyTransformer,
    _LSTMClassifier,
    _TinyLM,
)
from tuner.workloads.training import Dataset, SupervisedWorkload, count_parameters

Family = Literal["mlp", "cnn", "rnn", "transformer"]
FAMILIES: tuple[Family, ...] = ("mlp", "cnn", "rnn", "transformer")


@dataclass(frozen=True)
class ZooSpec:
    """One zoo task: its family, width (hidden units, channels or model width), batch size,
    training rows (sequences) and epochs; ``size`` is its nominal size step (1, 4 or 16)."""

    name: str
    family: Family
    size: int
    width: int
    batch_size: int
    dataset_size: int
    epochs: int


# Per family: the widths of sizes x1, x4 and x16, the batch size, the training rows and epochs.
_FAMILY_SETUP: dict[Family, tuple[tuple[int, int, int], int, int, int]] = {
    "mlp": ((8, 32, 128), 32, DIGITS_TRAIN, 8),
    "cnn": ((2, 6, 16), 32, DIGITS_TRAIN, 4),
    "rnn": ((6, 12, 24), 32, 1024, 4),
    "transformer": ((8, 16, 32), 32, 1024, 3),
}
DEPTHS: dict[Family, int] = {"mlp": 2, "cnn": 3, "rnn": 1, "transformer": 2}
TASK_TYPES: dict[Family, Literal["classification", "language_modeling"]] = {
    "mlp": "classification", "cnn": "classification", "rnn": "classification",
    "transformer": "language_modeling",
}


def zoo_specs() -> tuple[ZooSpec, ...]:
    """Every zoo task, family by family: x1, x4, x16, then x4 with twice the batch and half the
    data (named ``...-x4-b64-half``)."""
    specs: list[ZooSpec] = []
    for family in FAMILIES:
        widths, batch, rows, epochs = _FAMILY_SETUP[family]
        for size, width in zip((1, 4, 16), widths, strict=True):
            specs.append(ZooSpec(f"{family}-x{size}", family, size, width, batch, rows, epochs))
        specs.append(ZooSpec(f"{family}-x4-b{2 * batch}-half", family, 4, widths[1], 2 * batch,
                             rows // 2, epochs))
    return tuple(specs)


def zoo_names() -> tuple[str, ...]:
    return tuple(s.name for s in zoo_specs())


def zoo_spec(name: str) -> ZooSpec:
    for spec in zoo_specs():
        if spec.name == name:
            return spec
    raise ValueError(f"zoo task: unknown {name!r} (known: {', '.join(zoo_names())})")


# --------------------------------------------------------------------------------------------
# The families: the built-in workloads with a spec


class _ZooMLP(DigitsMLP):
    """``DigitsMLP`` of width ``spec.width`` on the first ``spec.dataset_size`` training rows."""

    spec: ClassVar[ZooSpec]

    def make_dataset(self) -> Dataset:
        data = super().make_dataset()
        return Dataset(data.train.rows(torch.arange(self.train_size)), data.val)


class _ZooCNN(DigitsCNN):
    """``DigitsCNN``'s two 3x3 convolutions with ``c`` and ``2c`` channels (16 and 32 there),
    pooled, then a linear head."""

    spec: ClassVar[ZooSpec]

    def build_model(self) -> nn.Module:
        c = self.spec.width
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * c * 4 * 4, 10),
        )

    def make_dataset(self) -> Dataset:
        data = super().make_dataset()
        return Dataset(data.train.rows(torch.arange(self.train_size)), data.val)


class _ZooLSTM(SequenceLSTM):
    """``SequenceLSTM`` with embedding and hidden of width ``spec.width``."""

    spec: ClassVar[ZooSpec]

    def build_model(self) -> nn.Module:
        return _LSTMClassifier(self.vocab, self.spec.width, self.spec.width, 2)


class _ZooTransformer(TinyTransformer):
    """``TinyTransformer`` of model width ``spec.width``."""

    spec: ClassVar[ZooSpec]

    def build_model(self) -> nn.Module:
        return _TinyLM(self.vocab, 2 * self.prefix + 1, self.spec.width, self.layers, self.heads)


_FAMILY_CLASSES: dict[Family, type[SupervisedWorkload]] = {
    "mlp": _ZooMLP, "cnn": _ZooCNN, "rnn": _ZooLSTM, "transformer": _ZooTransformer,
}
# Class attributes per family beyond the spec's (shorter sequences than the built-ins: a trial
# stays well under a second). Length 12 over 4 tokens keeps the LSTM's classes about balanced.
_FAMILY_ATTRS: dict[Family, dict[str, object]] = {
    "mlp": {},
    "cnn": {},
    "rnn": {"vocab": 4, "length": 12, "pattern": (1, 3), "n_val": 256},
    "transformer": {"symbols": 8, "prefix": 6, "heads": 2, "n_val": 256},
}


_WIDTH_ATTRS: dict[Family, tuple[str, ...]] = {
    "mlp": ("hidden",), "cnn": (), "rnn": ("embed", "hidden"), "transformer": ("d_model",),
}


def task_of(spec: ZooSpec, workload: SupervisedWorkload) -> TaskDescription:
    """The task a zoo workload trains, read from its model."""
    return TaskDescription(
        model_family=spec.family, task_type=TASK_TYPES[spec.family],
        num_parameters=count_parameters(workload.build_model()), num_layers=DEPTHS[spec.family],
        dataset_size=spec.dataset_size, batch_size=spec.batch_size,
    )


@functools.cache
def zoo_workload(name: str) -> Workload:
    """The zoo task ``name`` as a workload (built once per process; not registered)."""
    spec = zoo_spec(name)
    base = _FAMILY_CLASSES[spec.family]
    attrs: dict[str, object] = {
        **_FAMILY_ATTRS[spec.family], "spec": spec, "name": f"zoo-{spec.name}",
        "batch_size": spec.batch_size, "train_size": spec.dataset_size,
        "default_epochs": spec.epochs, **dict.fromkeys(_WIDTH_ATTRS[spec.family], spec.width),
    }
    cls = type(f"Zoo_{spec.name.replace('-', '_')}", (base,), attrs)
    workload: SupervisedWorkload = cls()
    task = task_of(spec, workload)
    cls.task = task  # type: ignore[attr-defined]
    cls.summary = (f"zoo: {spec.family} x{spec.size} (width {spec.width}, "  # type: ignore[attr-defined]
                   f"{task.num_parameters} parameters), batch {spec.batch_size}, "
                   f"{spec.dataset_size} training rows, {spec.epochs} epochs")
    return workload
