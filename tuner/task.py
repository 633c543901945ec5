"""The task description: what a user tells optpilot about their model and training.

``fine_tuning`` takes ``false``, ``true``, ``"full"`` or ``"parameter_efficient"``: ``true`` is
full fine-tuning unless ``frozen_parameters`` says most of the model stays frozen (adapters, LoRA,
prompt tuning train a small set on a large frozen model) or, without it, the model is a
Transformer with few trainable parameters; ``fine_tuning_kind`` is the resolved kind.
``num_parameters`` counts the trainable parameters; ``frozen_parameters`` the pretrained ones that
stay frozen (they still take memory, but no gradients and no optimizer state).

``training_steps`` is the training horizon in optimizer steps: a number, ``"unknown"`` (open-ended
training: stop when it is good enough, continue from a checkpoint later), or null when not
stated. Not stated is read as a horizon the user knows and will pass when building the schedule,
as every published training in the evidence did; ``"unknown"`` is what makes schedule-free
optimizers and WSD schedules the better choice.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

ModelFamily = Literal["linear", "mlp", "cnn", "rnn", "transformer", "gnn", "other"]
TaskType = Literal[
    "classification", "regression", "language_modeling", "generation",
    "reinforcement_learning", "other",
]
Precision = Literal["fp32", "bf16", "fp16"]
FineTuningKind = Literal["full", "parameter_efficient"]
UNKNOWN_HORIZON = "unknown"

# Generous upper bounds: far beyond any real training run, small enough to keep arithmetic exact.
MAX_PARAMETERS = 10**15
MAX_COUNT = 10**13


def whole_number(value: object) -> object:
    """JSON has one number type: 3.0 is the integer 3, as JSON Schema counts it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(whole_number)]
"""An integer that also takes 3.0 (not 3.5, "3" or true, in a strict model)."""

# Bounds go before the validator, and none is added at the field: pydantic otherwise writes
# them into the JSON schema as "ge"/"le", which JSON Schema does not know.
PositiveCount = Annotated[int, Field(ge=1, le=MAX_COUNT), BeforeValidator(whole_number)]
LayerCount = Annotated[int, Field(ge=1, le=100_000), BeforeValidator(whole_number)]
FrozenCount = Annotated[int, Field(ge=0, le=MAX_PARAMETERS), BeforeValidator(whole_number)]

FINE_TUNING_VALUES = (False, True, "full", "parameter_efficient")
# A Transformer fine-tuned with fewer trainable parameters than this, when the frozen ones are not
# given, is read as parameter-efficient: LoRA, adapters and prompt tuning train 0.3-40M
# parameters of 0.1-175B models (Hu et al. 2021, Tables 2-4; Lester et al. 2021), while the
# smallest Transformers fully fine-tuned in the published table (tuner/evidence) have 1.1e8.
PEFT_TRAINABLE_MAX = 10_000_000


def _fine_tuning_value(value: object) -> object:
    """One clear error for anything but the four accepted values (no 1/0 or "yes")."""
    if not any(value is v if isinstance(v, bool) else value == v for v in FINE_TUNING_VALUES):
        raise ValueError('must be true, false, "full" or "parameter_efficient"')
    return value


def _training_steps_value(value: object) -> object:
    """One clear error for anything but a whole number of steps, "unknown" or null."""
    if value is None or value == UNKNOWN_HORIZON:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise ValueError(f'must be a whole number of steps in 1..{MAX_COUNT:.0e}, "unknown" '
                         "(open-ended training) or null (not stated)")
    return value


class TaskDescription(BaseModel):
    """A model and its training setup. Unknown fields are rejected."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # As its JSON schema reads: false/true for the flags, numbers for the sizes ("0" and
        # 0 are not booleans, "5" and true are not counts; 5.0 is 5: WholeNumber).
        strict=True,
        json_schema_extra={
            "examples": [
                {"model_family": "transformer", "task_type": "language_modeling",
                 "num_parameters": 124_000_000, "num_layers": 12, "dataset_size": 8_000_000,
                 "batch_size": 512, "memory_budget_gb": 24, "precision": "bf16"},
            ]
        },
    )

    model_family: ModelFamily = Field(description="Architecture family (LSTM/GRU are 'rnn').")
    task_type: TaskType = "classification"
    num_parameters: WholeNumber = Field(ge=1, le=MAX_PARAMETERS,
                                        description="Trainable parameters.")
    num_layers: LayerCount | None = Field(default=None, description="Depth.")
    dataset_size: PositiveCount | None = Field(
        default=None, description="Training examples (sequences for language models)."
    )
    batch_size: PositiveCount | None = Field(
        default=None, description="Global batch, in examples or sequences."
    )
    sparse_features: bool = Field(default=False, description="Embedding-heavy / sparse gradients.")
    fine_tuning: Annotated[bool | FineTuningKind, BeforeValidator(_fine_tuning_value)] = Field(
        default=False,
        description="Starts from pretrained weights: true (full, unless frozen_parameters says "
                    "most of the model is frozen), \"full\" or \"parameter_efficient\" "
                    "(adapters, LoRA: few trainable parameters on a large frozen model).",
    )
    frozen_parameters: FrozenCount | None = Field(
        default=None,
        description="Parameters kept frozen (not counted in num_parameters): they take memory "
                    "but no gradients or optimizer state. With fine_tuning true, more frozen "
                    "than trainable parameters reads as parameter-efficient fine-tuning.",
    )
    num_devices: WholeNumber = Field(
        default=1, ge=1, le=1_000_000, description="Accelerators used together."
    )
    memory_budget_gb: float | None = Field(
        default=None, gt=0, le=1_000_000, allow_inf_nan=False,
        description="Accelerator memory per device, in GB.",
    )
    precision: Precision = Field(default="fp32", description="Parameter/gradient precision.")
    training_steps: Annotated[
        PositiveCount | Literal["unknown"] | None, BeforeValidator(_training_steps_value)
    ] = Field(
        default=None,
        description="Training horizon in optimizer steps; \"unknown\" for open-ended training "
                    "(schedule-free optimizers and WSD schedules then come first); null: not "
                    "stated (a horizon you know, passed when you build the schedule).",
    )

    @property
    def horizon_unknown(self) -> bool:
        """The user said the training horizon is unknown (open-ended training)."""
        return self.training_steps == UNKNOWN_HORIZON

    @property
    def fine_tuning_kind(self) -> FineTuningKind | None:
        """None (training from scratch), ``"full"`` or ``"parameter_efficient"``. Plain ``true``
        is parameter-efficient when more parameters stay frozen than are trained, or, without
        ``frozen_parameters``, for a Transformer with under ``PEFT_TRAINABLE_MAX`` trainable
        parameters; full otherwise."""
        if self.fine_tuning is False:
            return None
        if self.fine_tuning is True:
            if self.frozen_parameters is not None:
                efficient = self.frozen_parameters > self.num_parameters
            else:
                efficient = (self.model_family == "transformer"
                             and self.num_parameters < PEFT_TRAINABLE_MAX)
            return "parameter_efficient" if efficient else "full"
        return self.fine_tuning

    @property
    def total_parameters(self) -> int:
        """Trainable plus frozen parameters: the whole model held in memory."""
        return self.num_parameters + (self.frozen_parameters or 0)
