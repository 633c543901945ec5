"""The task description: what a user tells optpilot about their model and training (DESIGN.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

ModelFamily = Literal["linear", "mlp", "cnn", "rnn", "transformer", "gnn", "other"]
TaskType = Literal[
    "classification", "regression", "language_modeling", "generation",
    "reinforcement_learning", "other",
]
Precision = Literal["fp32", "bf16", "fp16"]

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
    fine_tuning: bool = Field(default=False, description="Starts from pretrained weights.")
    num_devices: WholeNumber = Field(
        default=1, ge=1, le=1_000_000, description="Accelerators used together."
    )
    memory_budget_gb: float | None = Field(
        default=None, gt=0, le=1_000_000, allow_inf_nan=False,
        description="Accelerator memory per device, in GB.",
    )
    precision: Precision = Field(default="fp32", description="Parameter/gradient precision.")
