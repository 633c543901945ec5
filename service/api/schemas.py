"""API request and response models (the JSON the service accepts and returns).

Requests reject unknown fields and bound every string, list and number; strings never carry NUL
characters or lone surrogates (PostgreSQL cannot store them). Responses never carry NaN or
infinity: such floats are serialized as ``null``. The task description itself is
``tuner.task.TaskDescription``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)

import optimizers
from optimizers import HyperparameterPrior, Schedule, SearchRange
from service.core import jsonsafe
from tuner.evidence.history import DEFAULT_NAMESPACE, MIN_COMPLETED_TRIALS, NAMESPACE_PATTERN
from tuner.evidence.insights import RuleInsights
from tuner.evidence.records import Evidence
from tuner.task import MAX_PARAMETERS, ModelFamily, TaskDescription, TaskType, WholeNumber

T = TypeVar("T")

MAX_TOP_K = len(optimizers.names())  # every registered optimizer (muon needs torch >= 2.9)
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_OFFSET = 10**9
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


# --- shared field types -----------------------------------------------------------------------


def reject_unsafe_text(value: str) -> str:
    """Refuse NUL characters and lone surrogates (not storable in PostgreSQL, not UTF-8)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


NO_NUL_PATTERN = r"^[^\u0000]*$"
"""States the NUL rule in the OpenAPI document (lone surrogates, also refused, cannot be said in
JSON Schema; no JSON generator produces them by accident)."""

# Each type below states its length bounds and pattern in ONE StringConstraints placed before the
# validator: constraints added after an AfterValidator are enforced but left out of the OpenAPI
# document, so a client (or schemathesis) cannot know them.

ShortText = Annotated[str, StringConstraints(max_length=1_000, pattern=NO_NUL_PATTERN),
                      AfterValidator(reject_unsafe_text)]
"""Free text up to 1,000 characters."""

ClientId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NO_NUL_PATTERN),
                     AfterValidator(reject_unsafe_text)]
"""Who evaluates a client-side trial: up to 128 characters."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NAME_PATTERN)]
"""A registry handle (optimizer, workload): letters, digits, ``_``, ``.``, ``-``; <= 64 chars."""

ResourceId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL_PATTERN),
                       AfterValidator(reject_unsafe_text)]
"""A path identifier as received (unknown ones are 404s, over-long ones 422s)."""

ParameterCount = Annotated[int, Field(ge=1, le=MAX_PARAMETERS)]

Namespace = Annotated[str, StringConstraints(pattern=NAMESPACE_PATTERN, max_length=64),
                      Field(description="A team's or project's label: recommendations and jobs "
                            "learn only from the history of their own namespace. 1-64 "
                            "lower-case letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit.")]
UseHistory = Annotated[bool, Field(description="Learn from the finished jobs of the namespace "
                                               "(their winners move scores and lrs).")]

OutFloat = Annotated[
    float | None,
    PlainSerializer(jsonsafe.answer_float, return_type=float | None, when_used="always"),
]
"""A float in a response: NaN and infinities become ``null``; 15 significant digits."""

JsonObject = Annotated[
    dict[str, Any],
    PlainSerializer(jsonsafe.answer, return_type=dict[str, Any], when_used="always"),
]
"""A free-form JSON object in a response: non-finite floats as ``null``, 15 significant
digits."""


def one_of_names(names: Callable[[], Sequence[str]]) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` for a :data:`Name` field (alone, in a list, or nullable) that must
    be one of ``names()``: the registered optimizers or workloads, listed when the OpenAPI
    document is built (after plugins registered theirs)."""

    def state(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", [schema]):
            target = branch.get("items", {}) if branch.get("type") == "array" else branch
            if target.get("type") == "string":
                target["enum"] = list(names())

    return state


class RequestModel(BaseModel):
    """Request parameters: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")


class BodyModel(RequestModel):
    """A JSON request body, validated as strictly as its schema reads: a boolean is ``true`` or
    ``false``, a number a JSON number (not a string or a boolean), an integer a whole JSON number
    without a fraction part."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="ignore", from_attributes=True)

    @model_serializer(mode="wrap")
    def _answer_floats(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # Every float of an answer, nested records (priors, evidence, schedules) included, carries
        # 15 significant digits. Unannotated on purpose: the OpenAPI schema stays the model's own.
        return jsonsafe.answer(handler(self))


# --- recommendations --------------------------------------------------------------------------

_TASK_EXAMPLE: dict[str, Any] = {
    "model_family": "transformer",
    "task_type": "language_modeling",
    "num_parameters": 124_000_000,
    "num_layers": 12,
    "dataset_size": 8_000_000,
    "batch_size": 512,
    "memory_budget_gb": 24,
    "precision": "bf16",
}


class RecommendationRequest(BodyModel):
    """``POST /v1/recommendations``: describe the model; get ranked optimizers with priors."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"task": _TASK_EXAMPLE, "top_k": 3},
                {"task": {"model_family": "cnn", "num_parameters": 11_000_000}, "top_k": 5},
            ]
        },
    )

    task: TaskDescription
    top_k: WholeNumber = Field(default=3, ge=1, le=MAX_TOP_K,
                               description="How many candidates (at most every optimizer).")
    use_history: UseHistory = True
    namespace: Namespace = DEFAULT_NAMESPACE


class MemoryOut(ResponseModel):
    state_bytes: int | None = None
    total_bytes: int | None = None
    fits: bool | None = Field(
        default=None, description="Null when the task gave no memory budget."
    )


class CandidateOut(ResponseModel):
    optimizer: str
    score: OutFloat = Field(description="Prior probability; scores sum to at most 1.")
    hyperparameters: dict[str, HyperparameterPrior] = Field(
        description="Per hyperparameter: where to start (default) and where to search.")
    memory: MemoryOut
    rationale: list[str]
    references: list[str]
    evidence: list[Evidence] = Field(
        default_factory=list,
        description="The most similar published trainings (and past jobs) that moved this "
                    "candidate, most similar first; empty in recommendations stored before "
                    "evidence existed.")
    schedule: Schedule | None = Field(
        default=None,
        description="The lr schedule the lr belongs to: hyperparameters.lr.default is its peak "
                    "(the rationale says so in words). Build it with "
                    "optimizers.build_scheduler(optimizer, schedule, total_steps); 'none' for "
                    "schedule-free optimizers. Null in recommendations stored before schedules.")


class RecommendationOut(ResponseModel):
    model_config = ConfigDict(
        extra="ignore",
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "0f8e6a1d2c3b4a5968778695a4b3c2d1",
                    "task": _TASK_EXAMPLE,
                    "top_k": 1,
                    "created_at": "2025-01-01T12:00:00Z",
                    "candidates": [
                        {
                            "optimizer": "adamw",
                            "score": 0.55,
                            "hyperparameters": {
                                "lr": {"default": 3e-4, "low": 3e-5, "high": 3e-3, "log": True,
                                       "complement": False},
                            },
                            "memory": {"state_bytes": 992_000_000, "total_bytes": 1_488_000_000,
                                       "fits": True},
                            "rationale": ["transformer family: AdamW is the standard choice",
                                          "lr is the peak of its schedule: 1% warm-up, then "
                                          "cosine decay to 10% of the peak"],
                            "references": ["Loshchilov & Hutter 2019"],
                            "schedule": {"name": "cosine", "warmup_steps": None,
                                         "warmup_fraction": 0.01, "final_lr_fraction": 0.1,
                                         "decay_fraction": None, "decay_shape": None},
                        }
                    ],
                }
            ]
        },
    )

    id: str
    task: TaskDescription
    top_k: int
    namespace: str = DEFAULT_NAMESPACE
    use_history: bool = True
    created_at: datetime
    candidates: list[CandidateOut]


# --- catalogs ---------------------------------------------------------------------------------


class Listing(BaseModel, Generic[T]):
    """A complete (unpaginated) list."""

    items: list[T]
    total: int


class OptimizerOut(ResponseModel):
    name: str
    family: str
    when_to_use: str
    defaults: dict[str, OutFloat]
    search_space: dict[str, SearchRange] = Field(
        description="Search ranges (the starting values are in defaults).")
    state_bytes_per_param: OutFloat
    references: list[str]
    tuning_order: list[str] = Field(default_factory=list)


class WorkloadOut(ResponseModel):
    name: str
    summary: str
    task: TaskDescription
    metric: str
    direction: Literal["minimize", "maximize"]
    default_epochs: int


# --- results ----------------------------------------------------------------------------------


class Page(BaseModel, Generic[T]):
    """One page of a longer list: ``items[0]`` is the ``offset``-th of ``total``."""

    items: list[T]
    total: int
    limit: int
    offset: int


class ResultsFilter(RequestModel):
    """Which results to consider (query parameters; all optional, combined with AND).

    The size range is inclusive; a ``min_parameters`` above ``max_parameters`` matches nothing
    (an empty page, not an error: no schema can state a rule across two query parameters)."""

    model_family: ModelFamily | None = None
    task_type: TaskType | None = None
    optimizer: Name | None = Field(default=None, description="The winning optimizer.")
    workload: Name | None = None
    min_parameters: ParameterCount | None = Field(
        default=None, description="At least this many parameters.")
    max_parameters: ParameterCount | None = Field(
        default=None, description="At most this many (below min_parameters: nothing matches).")


class ResultsQuery(ResultsFilter):
    """``GET /v1/results``: the filter plus a page."""

    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class SummaryQuery(ResultsFilter):
    """``GET /v1/results/summary``: the filter, optionally narrowed to tasks of a similar size.

    With ``num_parameters`` only results whose model size is within ``factor`` of it (either
    way) count: give ``model_family`` too for "tasks like mine".
    """

    num_parameters: ParameterCount | None = Field(
        default=None, description="Size of the task to compare with."
    )
    factor: float = Field(
        default=10.0, ge=1.0, le=1_000_000.0, allow_inf_nan=False,
        description="Similar means num_parameters within this factor, either way.",
    )


class ResultOut(ResponseModel):
    id: str
    job_id: str
    workload: str | None
    model_family: str
    task_type: str
    num_parameters: int
    task: JsonObject
    metric: str
    direction: str
    best_value: OutFloat
    best_optimizer: str | None
    best_hyperparameters: JsonObject
    per_optimizer: JsonObject
    trials_used: int
    prior_top: str | None = Field(description="The prior's top-ranked optimizer.")
    created_at: datetime


class OptimizerWins(BaseModel):
    """How often an optimizer won on one metric (its results on another metric are another
    row: values of different metrics are never ranked together)."""

    optimizer: str
    wins: int
    share: OutFloat = Field(description="wins / decided results on this metric")
    median_best_value: OutFloat = Field(
        default=None, description="Median best value of its wins on this metric."
    )
    metric: str = Field(description="The metric of these wins (val_loss, accuracy, ...).")
    direction: Literal["minimize", "maximize"] = Field(description="Better is lower or higher.")


class SimilarTo(BaseModel):
    num_parameters: int
    factor: float
    min_parameters: int
    max_parameters: int


class ResultsSummary(BaseModel):
    total: int = Field(description="Results matching the filter.")
    decided: int = Field(description="Those with a winning optimizer.")
    optimizers: list[OptimizerWins] = Field(
        description="Grouped by metric (the metric with most decided results first), most wins "
        "first within a metric.")
    prior_agreement: OutFloat = Field(
        default=None,
        description="Share of decided results whose winner was the prior's top choice.",
    )
    similar_to: SimilarTo | None = None


# --- history and insights ---------------------------------------------------------------------

NDJSON = "application/x-ndjson"


class HistoryQuery(RequestModel):
    """``GET /v1/history``: whose history to export."""

    namespace: Namespace | None = Field(
        default=None, description="Only this namespace's jobs (default: every namespace).")


class HistoryImportOut(BaseModel):
    added: int = Field(description="Jobs added to the history.")
    skipped: int = Field(description="Jobs already there (same job id), or of this server.")


class InsightsQuery(RequestModel):
    """``GET /v1/insights/rules``: whose history to hold the rules against."""

    namespace: Namespace = DEFAULT_NAMESPACE


class InsightRowOut(ResponseModel):
    rule: str = Field(description="The rule's name in tuner.rules.RULES; 'prior' for the rules "
                                  "together (their top-1 on each job's task).")
    top_pick: str | None = Field(
        description="The optimizer the rule's weights favour most (null: it favours none; "
                    "the prior's pick is per job).")
    jobs: int = Field(description="Jobs it fired on (those that count).")
    decided: int = Field(description="Of those, jobs with a winner.")
    top_pick_won: OutFloat = Field(description="Share of the decided jobs the top pick won.")
    top_pick_tried: int | None = Field(description="Decided jobs in which the top pick ran.")
    median_lr_ratio: OutFloat = Field(
        description="Median of the winner's tuned lr / the rules' lr for it on the job's task.")
    lr_jobs: int = Field(description="Jobs in that median.")
    examples: list[str] = Field(description="Job ids, where the rule was most wrong first.")


class RuleInsightsOut(ResponseModel):
    namespace: str
    jobs: int = Field(description="The namespace's jobs that count (enough completed trials).")
    ignored: int = Field(description="Jobs with fewer completed trials, not counted.")
    min_completed_trials: int
    prior: InsightRowOut
    rules: list[InsightRowOut] = Field(
        description="Every rule, where the rules disagree most with the history first.")

    @classmethod
    def of(cls, namespace: str, insights: RuleInsights) -> RuleInsightsOut:
        return cls.model_validate({"namespace": namespace, "jobs": insights.jobs,
                                   "ignored": insights.ignored,
                                   "min_completed_trials": MIN_COMPLETED_TRIALS,
                                   "prior": insights.prior, "rules": insights.rules})


# --- health -----------------------------------------------------------------------------------


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    status: Literal["ready"] = "ready"
    database: Literal["ok"] = "ok"
    schema_revision: str | None = None
