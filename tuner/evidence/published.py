"""Published trainings: what landmark papers trained, and with which optimizer settings.

``published.csv`` (next to this module, shipped in the wheel) holds one row per published
training: the task as optpilot's task description sees it (model family, task type, parameters,
batch, ...), what the authors used (optimizer under its registry key, peak lr, betas, momentum,
eps, weight decay, schedule, warm-up) and where in the paper those values stand. An empty cell means
the paper does not say. ``docs/evidence.md`` explains the columns and the rules for adding a row.

``published_trainings()`` loads and validates the table once per process. Every problem is a
``PublishedEvidenceError`` that names the line, the row id and the column.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar, get_args

import optimizers
from optimizers.registry import HYPERPARAMETER_BOUNDS
from tuner.task import MAX_COUNT, MAX_PARAMETERS, ModelFamily, Precision, TaskType

CSV_NAME: Final = "published.csv"

Domain = Literal[
    "vision", "language", "speech", "rl", "generative", "graph", "recommender", "tabular",
]
# The class of training, finer than the model family: what calibrates a rule.
Kind = Literal[
    "cnn_supervised", "vit_supervised", "self_supervised", "lm_pretraining", "fine_tuning_full",
    "fine_tuning_peft", "rl", "gan", "diffusion", "gnn", "rnn_seq2seq", "transformer_seq2seq",
    "speech", "recommender", "tabular", "other",
]
FineTuning = Literal["full", "parameter_efficient"]
WeightDecayKind = Literal["l2", "decoupled"]
Schedule = Literal[
    "constant", "step", "plateau", "cosine", "linear", "inverse_sqrt", "exponential",
    "polynomial", "wsd",
]
WarmupUnit = Literal["steps", "epochs", "tokens", "examples", "percent"]

COLUMNS: Final = (
    "id", "model", "domain", "kind",
    "model_family", "task_type", "num_parameters", "frozen_parameters", "num_layers",
    "dataset_size", "batch_size", "sparse_features", "fine_tuning", "num_devices", "precision",
    "optimizer", "lr", "beta1", "beta2", "momentum", "eps", "weight_decay", "weight_decay_kind",
    "schedule", "warmup", "final_lr_fraction",
    "citation", "where", "notes",
)

# Which of the optional optimizer columns mean something for each optimizer. For RMSProp, beta2
# is its squared-gradient decay (torch's ``alpha``); for Adafactor, beta1 is its optional first
# moment and beta2 its second-moment decay. Optimizers not listed accept every column.
_SGD_MOMENTUM = frozenset({"momentum"})
_ADAM_LIKE = frozenset({"beta1", "beta2", "eps"})
OPTIMIZER_COLUMNS: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "sgd": frozenset(),
    "sgd_momentum": _SGD_MOMENTUM,
    "nesterov": _SGD_MOMENTUM,
    "rmsprop": frozenset({"beta2", "momentum", "eps"}),
    "adagrad": frozenset({"eps"}),
    "adam": _ADAM_LIKE,
    "adamw": _ADAM_LIKE,
    "nadam": _ADAM_LIKE,
    "radam": _ADAM_LIKE,
    "lamb": _ADAM_LIKE,
    "adafactor": _ADAM_LIKE,
    "lion": frozenset({"beta1", "beta2"}),
    "muon": _SGD_MOMENTUM,
})
_OPTIONAL_OPTIMIZER_COLUMNS: Final = ("beta1", "beta2", "momentum", "eps")

_SLUG = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)*")
_WARMUP = re.compile(r"(?P<amount>\d+(?:\.\d+)?)(?P<scale>[kMB]?) (?P<unit>[a-z]+)")
_SCALE = {"": 1, "k": 10**3, "M": 10**6, "B": 10**9}


class PublishedEvidenceError(ValueError):
    """A problem in the published-evidence table, located by line, row id and column."""

    def __init__(
        self, source: str, line: int, row_id: str | None, column: str | None, problem: str,
    ) -> None:
        self.source, self.line, self.row_id, self.column = source, line, row_id, column
        where = f"{source}, line {line}"
        if row_id:
            where += f", row {row_id!r}"
        if column:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Warmup:
    """A warm-up length as the paper states it: ``amount`` ``unit`` (e.g. 10000 steps)."""

    amount: float
    unit: WarmupUnit

    def __str__(self) -> str:
        amount = f"{self.amount:.0f}" if float(self.amount).is_integer() else f"{self.amount:g}"
        return f"{amount} {self.unit}"


@dataclass(frozen=True)
class PublishedTraining:
    """One published training: its task, what its authors used, and where they say so."""

    id: str
    model: str
    domain: Domain
    kind: Kind
    # The task, in the task description's terms (None: the paper does not say).
    model_family: ModelFamily
    task_type: TaskType
    num_parameters: int  # trainable parameters
    frozen_parameters: int | None  # parameter-efficient fine-tuning: the frozen base model
    num_layers: int | None
    dataset_size: int | None
    batch_size: int | None  # global batch, in examples or sequences
    sparse_features: bool
    fine_tuning: FineTuning | None
    num_devices: int | None
    precision: Precision | None
    # What was used.
    optimizer: str  # registry key
    lr: float  # peak lr
    beta1: float | None
    beta2: float | None
    momentum: float | None
    eps: float | None
    weight_decay: float | None
    weight_decay_kind: WeightDecayKind | None
    schedule: Schedule | None
    warmup: Warmup | None
    final_lr_fraction: float | None
    # Where it comes from.
    citation: str
    where: str
    notes: str

    def task_fields(self) -> dict[str, object]:
        """The task-description fields this row knows, ready for ``TaskDescription(**...)``.

        Fields the paper leaves open are omitted, so the task description's defaults apply.
        ``fine_tuning`` is true for full and parameter-efficient fine-tuning alike.
        """
        fields: dict[str, object] = {
            "model_family": self.model_family,
            "task_type": self.task_type,
            "num_parameters": self.num_parameters,
            "sparse_features": self.sparse_features,
            "fine_tuning": self.fine_tuning is not None,
        }
        optional = {
            "num_layers": self.num_layers, "dataset_size": self.dataset_size,
            "batch_size": self.batch_size, "num_devices": self.num_devices,
            "precision": self.precision,
        }
        fields.update({name: value for name, value in optional.items() if value is not None})
        return fields


@functools.cache
def published_trainings() -> tuple[PublishedTraining, ...]:
    """Every row of the shipped table, validated (loaded once per process)."""
    text = resources.files("tuner.evidence").joinpath(CSV_NAME).read_text(encoding="utf-8")
    return parse_published_trainings(text, source=CSV_NAME)


def parse_published_trainings(
    text: str, source: str = CSV_NAME,
) -> tuple[PublishedTraining, ...]:
    """Parse and validate a published-evidence table given as CSV text."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise PublishedEvidenceError(source, 1, None, None, "the table is empty") from None
    except csv.Error as error:
        raise PublishedEvidenceError(source, 1, None, None, f"bad CSV: {error}") from None
    if tuple(header) != COLUMNS:
        missing = [c for c in COLUMNS if c not in header]
        unknown = [c for c in header if c not in COLUMNS]
        problem = (
            f"missing columns {missing}, unknown columns {unknown}" if missing or unknown
            else f"columns must be in the order {list(COLUMNS)}"
        )
        raise PublishedEvidenceError(source, 1, None, None, f"header: {problem}")
    rows: list[PublishedTraining] = []
    seen: dict[str, int] = {}
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise PublishedEvidenceError(
                source, reader.line_num, None, None, f"bad CSV: {error}"
            ) from None
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        row_id = cells[0].strip() or None
        if len(cells) != len(COLUMNS):
            raise PublishedEvidenceError(
                source, line, row_id, None,
                f"expected {len(COLUMNS)} cells, found {len(cells)}",
            )
        row = _RowParser(source, line, row_id, dict(zip(COLUMNS, cells, strict=True))).parse()
        if row.id in seen:
            raise PublishedEvidenceError(
                source, line, row.id, "id", f"duplicate id (first on line {seen[row.id]})"
            )
        seen[row.id] = line
        rows.append(row)
    return tuple(rows)


_T = TypeVar("_T")
Converter = Callable[[str], _T]


def _choice(allowed: object) -> Converter[Any]:
    """A converter to one of a ``Literal``'s options (typed as that ``Literal`` by the caller)."""
    options = get_args(allowed)

    def convert(cell: str) -> Any:
        if cell not in options:
            raise ValueError(f"{cell!r} is not one of {', '.join(options)}")
        return cell

    return convert


def _count(high: int = MAX_COUNT) -> Converter[int]:
    def convert(cell: str) -> int:
        if not cell.isdigit():
            raise ValueError(f"{cell!r} is not a whole number (write digits only)")
        value = int(cell)
        if not 1 <= value <= high:
            raise ValueError(f"{value} is outside [1, {high}]")
        return value

    return convert


def _number(low: float, high: float, low_inclusive: bool = True,
            high_inclusive: bool = True) -> Converter[float]:
    def convert(cell: str) -> float:
        try:
            value = float(cell)
        except ValueError:
            raise ValueError(f"{cell!r} is not a number") from None
        low_ok = value >= low if low_inclusive else value > low
        high_ok = value <= high if high_inclusive else value < high
        if not (math.isfinite(value) and low_ok and high_ok):
            lo, hi = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
            raise ValueError(f"{value} is outside {lo}{low}, {high}{hi}")
        return value

    return convert


def _hyperparameter(name: str) -> Converter[float]:
    """A value the optimizer registry also bounds: the same bounds apply here."""
    bound = HYPERPARAMETER_BOUNDS[name]
    return _number(bound.low, bound.high, bound.low_inclusive, bound.high_inclusive)


def _boolean(cell: str) -> bool:
    if cell not in ("true", "false"):
        raise ValueError(f"{cell!r} is not true or false")
    return cell == "true"


def _warmup(cell: str) -> Warmup:
    match = _WARMUP.fullmatch(cell)
    units = get_args(WarmupUnit)
    if match is None or match["unit"] not in units:
        raise ValueError(
            f"{cell!r} is not '<number>[k|M|B] <unit>' with unit one of {', '.join(units)}"
        )
    amount = float(match["amount"]) * _SCALE[match["scale"]]
    if match["unit"] == "percent" and amount > 100:
        raise ValueError(f"{cell!r}: a warm-up over {amount:g} percent of training")
    unit: WarmupUnit = _choice(WarmupUnit)(match["unit"])
    return Warmup(amount, unit)


def _text(cell: str) -> str:
    return cell


class _RowParser:
    """Turns one row's cells into a ``PublishedTraining``; every error names its column."""

    def __init__(self, source: str, line: int, row_id: str | None, cells: dict[str, str]) -> None:
        self.source, self.line, self.row_id = source, line, row_id
        self.cells = {name: value.strip() for name, value in cells.items()}

    def error(self, column: str | None, problem: str) -> PublishedEvidenceError:
        return PublishedEvidenceError(self.source, self.line, self.row_id, column, problem)

    def optional(self, column: str, convert: Converter[_T]) -> _T | None:
        """The cell's value, or None when it is empty (the paper does not say)."""
        cell = self.cells[column]
        if not cell:
            return None
        try:
            return convert(cell)
        except ValueError as error:
            raise self.error(column, str(error)) from None

    def required(self, column: str, convert: Converter[_T]) -> _T:
        value = self.optional(column, convert)
        if value is None:
            raise self.error(column, "required, but empty")
        return value

    def optimizer(self) -> str:
        name = self.required("optimizer", _text)
        if name not in optimizers.names():
            raise self.error(
                "optimizer", f"{name!r} is not a registered optimizer "
                f"(registered: {', '.join(optimizers.names())})",
            )
        return name

    def parse(self) -> PublishedTraining:
        row_id = self.required("id", _text)
        if not _SLUG.fullmatch(row_id):
            raise self.error("id", f"{row_id!r} is not a slug (lower-case letters, digits, - .)")
        optimizer = self.optimizer()
        allowed = OPTIMIZER_COLUMNS.get(optimizer, frozenset(_OPTIONAL_OPTIMIZER_COLUMNS))
        for column in _OPTIONAL_OPTIMIZER_COLUMNS:
            if self.cells[column] and column not in allowed:
                raise self.error(column, f"{optimizer} has no {column}")
        row = PublishedTraining(
            id=row_id,
            model=self.required("model", _text),
            domain=self.required("domain", _choice(Domain)),
            kind=self.required("kind", _choice(Kind)),
            model_family=self.required("model_family", _choice(ModelFamily)),
            task_type=self.required("task_type", _choice(TaskType)),
            num_parameters=self.required("num_parameters", _count(MAX_PARAMETERS)),
            frozen_parameters=self.optional("frozen_parameters", _count(MAX_PARAMETERS)),
            num_layers=self.optional("num_layers", _count(100_000)),
            dataset_size=self.optional("dataset_size", _count()),
            batch_size=self.optional("batch_size", _count()),
            sparse_features=self.required("sparse_features", _boolean),
            fine_tuning=self.optional("fine_tuning", _choice(FineTuning)),
            num_devices=self.optional("num_devices", _count(1_000_000)),
            precision=self.optional("precision", _choice(Precision)),
            optimizer=optimizer,
            lr=self.required("lr", _hyperparameter("lr")),
            beta1=self.optional("beta1", _hyperparameter("beta1")),
            beta2=self.optional("beta2", _hyperparameter("beta2")),
            momentum=self.optional("momentum", _hyperparameter("momentum")),
            eps=self.optional("eps", _hyperparameter("eps")),
            weight_decay=self.optional("weight_decay", _hyperparameter("weight_decay")),
            weight_decay_kind=self.optional("weight_decay_kind", _choice(WeightDecayKind)),
            schedule=self.optional("schedule", _choice(Schedule)),
            warmup=self.optional("warmup", _warmup),
            final_lr_fraction=self.optional("final_lr_fraction", _number(0.0, 1.0)),
            citation=self.required("citation", _text),
            where=self.required("where", _text),
            notes=self.cells["notes"],
        )
        self.check_consistency(row)
        return row

    def check_consistency(self, row: PublishedTraining) -> None:
        """Rules across columns: fine-tuning kinds, frozen parameters, weight-decay kinds."""
        if row.kind == "fine_tuning_peft" and row.fine_tuning != "parameter_efficient":
            raise self.error("fine_tuning", "kind fine_tuning_peft needs parameter_efficient")
        if row.kind == "fine_tuning_full" and row.fine_tuning != "full":
            raise self.error("fine_tuning", "kind fine_tuning_full needs full")
        if row.fine_tuning == "parameter_efficient" and row.frozen_parameters is None:
            raise self.error("frozen_parameters", "required for parameter_efficient fine-tuning")
        if row.frozen_parameters is not None and row.fine_tuning != "parameter_efficient":
            raise self.error(
                "frozen_parameters", "only parameter_efficient fine-tuning freezes parameters"
            )
        if row.optimizer == "adam" and row.weight_decay_kind == "decoupled":
            raise self.error("optimizer", "Adam with decoupled weight decay is adamw")
        if row.optimizer == "adamw" and row.weight_decay_kind == "l2":
            raise self.error("weight_decay_kind", "adamw decouples weight decay; L2 means adam")
        if row.weight_decay_kind is not None and row.weight_decay == 0:
            raise self.error("weight_decay_kind", "given for a weight decay of 0")
