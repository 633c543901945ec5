"""The rules behind optpilot's recommendations: one table of data, edited in this one file.

How a recommendation is made (``tuner.prior.recommend`` applies this table, nothing else does):

1. Every registered optimizer starts from ``BASE_WEIGHTS`` (an unnormalised prior; optimizers
   missing from it get ``DEFAULT_BASE_WEIGHT``) and from the registry's defaults and search space.
2. Each ``Rule`` of ``RULES`` whose ``applies(task)`` holds (and, when it has ``only_for``, only for
   the optimizers that pass it) multiplies scores by ``weights`` (``"*"`` = every optimizer not
   named) and changes hyperparameter priors by its ``adjust`` steps, in table order.
   ``Derive`` steps run after every other step, so they read their source's final values.
3. Scores are normalised over the whole catalog into prior probabilities.
4. Evidence (``tuner.evidence``: published trainings, later the service's own jobs) moves the
   scores and lrs by similarity, with the strengths set at the end of the constants below.
5. Candidates that fit the memory budget rank above those that do not; the top k are returned.

Every rule that changes a candidate's score or a value adds its ``rationale`` (a ``str.format``
template over ``t``, the task, and ``mem``, the candidate's ``MemoryUse``) and its ``reference``
to that candidate, followed by the numbers it changed.

The rules, in table order (``docs/recommendations.md`` explains each with its source; the
published-trainings benchmark, ``bench/recommend_accuracy.py``, scores them):

* small/simple: < 1e5 parameters (not rnn, transformer or gnn; not RL or image generation), or a
  linear/mlp model under 1e6 parameters with <= 1e5 examples (or unknown): SGD with momentum
  first, Adam second.
* general: everything else that triggers no rule (e.g. a 5e6-parameter MLP): Adam.
* convolutional networks trained on targets (classification, detection, self-play towers of >= 32
  layers), at any depth: SGD with momentum (Nesterov, then RMSProp next), lr 0.1 at batch 256
  scaled linearly with the batch.
* transformer: AdamW. Very deep (>= 32 layers; not convolutional, not Transformers, which have
  their own rule): AdamW.
* rnn: RMSProp (Adam a close second); recurrent language and translation models: plain SGD at
  lr 1.      * graph networks: Adam, lr 0.01.
* reinforcement learning: Adam (RMSProp second), lr 3e-4 whatever the size or batch.
* image generation (GANs, diffusion; generation by a non-sequence model): Adam (RMSProp for
  Wasserstein GANs), lr 2e-4, beta1 0.5.
* massive (>= 1e9 parameters, pretraining, batch unknown or >= 8192): LAMB; when Adam-family
  parameters + gradients + state exceed ``memory_budget_gb`` per device (sharded over
  ``num_devices``): Adafactor, Lion, SGD momentum.
* large global batch (>= 8192): LAMB and Lion, Adam-family kept.
* sparse features: Adagrad, plain SGD second.    * LM pretraining: Adafactor among the top.
* full fine-tuning: AdamW with lr 3e-5 in [1e-6, 1e-4]; other optimizers' lrs x0.1.
  Parameter-efficient fine-tuning (adapters, LoRA): AdamW with lr 3e-4 in [3e-5, 3e-3].
* lr vs size (transformers/LMs >= 1e8 parameters): GPT-3's table, log-log interpolated.
* small models (< ~2.5e7 parameters, supervised from scratch, not recurrent): Adam-family, LAMB,
  RMSProp and Adagrad lr x (2.5e7/N)^0.318, GPT-3's power law extended below its table; together
  with the batch factor at most x``SMALL_MODEL_LR_MAX_FACTOR``.
* lr vs batch (batch above 256; not for the fixed lr bands of fine-tuning, RL, image generation
  and graphs): linear for SGD up to x32 (batch 8192), square root for LAMB up to x16, square
  root for the Adam family up to x2. Batches below 256 keep the reference lr: on the built-in
  workloads (batch 32-128, ``bench/lr_sweep.py``) the best lr did not fall with the batch.
* Lion: lr = AdamW's / 5 (range /10../3), weight decay = AdamW's x 5 (range x3..x10).
* open-ended training (``training_steps: "unknown"``): schedule-free AdamW (and SGD) up.
* schedule-free: lr = AdamW's x 2.5 (range x1..x10), SGD momentum's x 10 (x10..x50).
* does not fit the memory budget: score x0.01, and below every candidate that fits.

The lr a candidate gets is the PEAK of an lr schedule, which a second table, ``SCHEDULE_RULES``,
chooses per candidate (the first row that applies; the last always does):

* schedule-free optimizers: none (their own warm-up, ``warmup_steps``: 5% of a known horizon).
* open-ended training (horizon unknown): WSD, 1-sqrt cool-down over the last 20%, warm-up in
  steps (2000, at most 5 epochs).
* GPT-style LM pretraining (Transformer LM from scratch, >= 7e7 parameters): 1% warm-up, cosine
  to 10%.
* fine-tuning (full or parameter-efficient): 6% warm-up, linear decay to 0.
* Transformer sequence-to-sequence (task ``other``): 4000-step warm-up, inverse square root.
* convolutional networks on labels: 5% warm-up, cosine to 0 (step decay is the older practice).
* reinforcement learning, image generation: constant lr, no warm-up.
* everything else: 5% warm-up, cosine to 0 (the AlgoPerf baselines, the built-in workloads).

Evidence (the similar published trainings' schedules) may then change the schedule's name
(``tuner.prior``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeAlias

from optimizers.registry import OptimizerSpec
from optimizers.schedules import DECAY_SHAPES, Schedule
from tuner.task import TaskDescription

# --------------------------------------------------------------------------------------------
# Thresholds and constants (change the numbers here)
# --------------------------------------------------------------------------------------------

# Below this a supervised model (not recurrent, Transformer or graph) is "small".
TINY_PARAMETERS: Final = 100_000
SMALL_PARAMETERS: Final = 1_000_000  # linear/mlp below this with small (or unknown) data is small
SMALL_DATASET: Final = 100_000  # "small data", in examples
# Not for convolutional networks (ResNets train with SGD at any depth), nor Transformers (their own
# rule already says AdamW; the two would stack).
VERY_DEEP_LAYERS: Final = 32
MASSIVE_PARAMETERS: Final = 1_000_000_000
LARGE_BATCH: Final = 8192
REFERENCE_BATCH: Final = 256  # batch at which the registry's (and GPT-3's) lrs are read
# Batch factors, each capped: SGD linear up to batch 8192 (Goyal et al. 2017 kept ResNet-50's
# accuracy with linear scaling up to 8k); LAMB square root up to x16 (You et al. 2020 scaled
# BERT's lr by the square root up to 32k-64k); the Adam family square root up to x2: the 34
# Adam/AdamW trainings from scratch above batch 256 in the published table (ViT and CLIP at
# 4k-32k, DeiT/Swin at 1k, GPT-3, LLaMA, OPT at 0.5-2k sequences) used a median 1.13x the lr the
# rules give at batch 256, almost all within 3x of it (bench/recommend_accuracy.py --laws).
SGD_BATCH_FACTOR_MAX: Final = 32.0
LAMB_BATCH_FACTOR_MAX: Final = 16.0
ADAM_BATCH_FACTOR_MAX: Final = 2.0
LM_SCALING_PARAMETERS: Final = 100_000_000  # GPT-3 lr table applies from here up
# GPT-3's table is a power law, lr ~ N ** -0.318 (6e-4 at 125M to 6e-5 at 175B); extended below the
# table it reaches the registry's Adam default (1e-3) at about 2.5e7 parameters. Smaller models
# get that law's rise, at most SMALL_MODEL_LR_MAX_FACTOR.
GPT3_LR_EXPONENT: Final = math.log(10) / math.log(175e9 / 125e6)
REGISTRY_ADAM_LR: Final = 1e-3
SMALL_MODEL_LR_PARAMETERS: Final = 125e6 * (6e-4 / REGISTRY_ADAM_LR) ** (1 / GPT3_LR_EXPONENT)
SMALL_MODEL_LR_MAX_FACTOR: Final = 100.0
# Full fine-tuning: default, low, high. BERT's grid is 5e-5, 3e-5, 2e-5 (Devlin et al. 2019,
# Appendix A.3): its middle, with the range reaching the 5e-6 .. 1e-6 of 70B-parameter RLHF stages
# (Touvron et al. 2023) and the 1e-4 of small models.
FINE_TUNING_LR: Final = (3e-5, 1e-6, 1e-4)
# Recurrent nets trained with plain SGD: lr 0.7 .. 1 with gradient clipping (Sutskever et al.
# 2014; Zaremba et al. 2014), up to 30 for averaged SGD (Merity et al. 2018).
RECURRENT_SGD_LR: Final = (1.0, 0.1, 30.0)
# Adapters and LoRA train new low-rank/bottleneck weights on a frozen model at 1e-4 .. 1e-3 (Hu et
# al. 2021, LoRA, Tables 9-11: 2e-4 .. 5e-4; Houlsby et al. 2019: 1e-4 .. 1e-3; Dettmers et al.
# 2023, QLoRA: 1e-4 .. 2e-4): the geometric middle of that band, and a decade either side.
PEFT_LR: Final = (3e-4, 3e-5, 3e-3)
# Policy/value networks: Adam at 3e-4 (Schulman et al. 2017, PPO; Haarnoja et al. 2018, SAC;
# DQN's RMSProp at 2.5e-4), whatever the network's size or batch.
RL_LR: Final = (3e-4, 3e-5, 3e-3)
# GANs and diffusion models: Adam at 1e-4 .. 2e-3 (Radford et al. 2016, DCGAN: 2e-4, beta1 0.5;
# Karras et al. 2019: 1e-3 .. 2e-3, beta1 0; Ho et al. 2020, DDPM: 2e-4 .. 2e-5).
IMAGE_GENERATION_LR: Final = (2e-4, 2e-5, 2e-3)
IMAGE_GENERATION_BETA1: Final = (0.5, 0.01, 0.9)
# Graph networks: Adam at 0.01 (Kipf & Welling 2017, GCN; Velickovic et al. 2018, GAT: 0.005 ..
# 0.01), full-batch on small graphs.
GRAPH_LR: Final = (1e-2, 1e-3, 1e-1)
MEMORY_PENALTY: Final = 0.01  # score factor for a candidate that does not fit the budget

# Schedule-free optimizers (Defazio et al. 2024; the authors' README): lrs 1-10x a scheduled
# AdamW's (their package's default 2.5e-3 is 2.5x torch AdamW's 1e-3) and 10-50x a scheduled
# SGD's (1.0 against SGD momentum's 0.1).
SCHEDULE_FREE_ADAMW_LR: Final = (2.5, 1.0, 10.0)
SCHEDULE_FREE_SGD_LR: Final = (10.0, 10.0, 50.0)
# Open-ended training: schedule-free AdamW was the best tuning-free entry of AlgoPerf 2024 (the
# self-tuning track) and needs no horizon; scheduled optimizers cannot decay towards an end they
# do not know. These factors lift schedule-free AdamW from its base weight (0.2) above Adam's, the
# general default (3.0; x20 -> 4.0), and schedule-free SGD above SGD momentum's (1.5; x10 -> 2.0).
OPEN_ENDED_SCHEDULE_FREE_ADAMW: Final = 20.0
OPEN_ENDED_SCHEDULE_FREE_SGD: Final = 10.0

# -- Schedules (SCHEDULE_RULES) --
# The AlgoPerf baselines (Dahl et al. 2023) and the built-in workloads: linear warm-up over 5% of
# the steps, then cosine decay to 0. Goyal et al. 2017's 5 warm-up epochs of ResNet-50's 90 are
# 5.6%.
WARMUP_FRACTION: Final = 0.05
# GPT-style LM pretraining: cosine to 10% of the peak (GPT-3, Brown et al. 2020, Sec. B; LLaMA,
# Touvron et al. 2023, Sec. 2.2; Pythia, Biderman et al. 2023), warm-up over 1% of the steps
# (Pythia; LLaMA's 2000 steps are about 0.8% of its 1T tokens at 4M tokens a batch). From Pythia's
# smallest model, the smallest published LM pretraining in the evidence table.
LM_WARMUP_FRACTION: Final = 0.01
LM_FINAL_LR_FRACTION: Final = 0.1
LM_SCHEDULE_PARAMETERS: Final = 70_000_000
# Fine-tuning: linear decay to 0 after a 6% warm-up (RoBERTa, Liu et al. 2019, Table 10; LoRA,
# Hu et al. 2021, Appendix D).
FINE_TUNING_WARMUP_FRACTION: Final = 0.06
# Transformer sequence-to-sequence: inverse square root after 4000 warm-up steps (Vaswani et al.
# 2017, Sec. 5.3).
SEQ2SEQ_WARMUP_STEPS: Final = 4000
# Open-ended training: WSD with a 1-sqrt cool-down over the last 20% (Hägele et al. 2024: it
# matches cosine at the same length and the cool-down can start whenever training is to end).
# A fraction-based warm-up needs the horizon, so the warm-up is in steps: 2000 (LLaMA, OPT-175B:
# the warm-up most often stated in the evidence table), at most 5 epochs when the data and batch
# sizes say how many steps an epoch is (Goyal et al. 2017).
OPEN_ENDED_DECAY_FRACTION: Final = 0.2
OPEN_ENDED_DECAY_SHAPE: Final = "1-sqrt"
OPEN_ENDED_WARMUP_STEPS: Final = 2000
OPEN_ENDED_WARMUP_EPOCHS: Final = 5
# Tuned schedule knobs: warm-up from none (He et al. 2016 at batch 256; DCGAN) to 10% (BERT's
# fine-tuning code, warmup_proportion 0.1); final lr from 0 (AlgoPerf, BERT) to 10% (GPT-3,
# LLaMA); WSD's cool-down shapes.
WARMUP_FRACTION_RANGE: Final = (0.0, 0.1)
FINAL_LR_FRACTION_RANGE: Final = (0.0, 0.1)
WSD_DECAY_SHAPES: Final = DECAY_SHAPES

GB: Final = 1e9  # memory_budget_gb is in decimal gigabytes
PRECISION_BYTES: Final[Mapping[str, int]] = MappingProxyType({"fp32": 4, "bf16": 2, "fp16": 2})
ADAM_STATE_BYTES: Final = 8  # two fp32 moments per parameter

# GPT-3 (Brown et al. 2020, Table 2.1): parameters -> Adam lr.
GPT3_LR_TABLE: Final[tuple[tuple[float, float], ...]] = (
    (125e6, 6e-4), (350e6, 3e-4), (760e6, 2.5e-4), (1.3e9, 2e-4),
    (2.7e9, 1.6e-4), (6.7e9, 1.2e-4), (13e9, 1e-4), (175e9, 6e-5),
)

ADAM_FAMILY: Final = frozenset({"adam", "adamw", "nadam", "radam"})
MOMENTUM_SGD: Final = frozenset({"sgd_momentum", "nesterov"})
# Per-coordinate adaptive steps (lr is a step size per coordinate, as in Adam).
ADAPTIVE: Final = ADAM_FAMILY | {"lamb", "rmsprop", "adagrad"}
SGD_FAMILY: Final = frozenset({"sgd", "sgd_momentum", "nesterov"})
SIMPLE_FAMILIES: Final = frozenset({"linear", "mlp"})

# Evidence (tuner.prior, tuner.evidence): how far similar past trainings move a recommendation.
# A score is multiplied by exp(EVIDENCE_SCORE_RATE * E), E the summed weight of the similar
# records that used the optimizer; an lr moves w / (w + EVIDENCE_LR_PSEUDOCOUNT) of the way (in
# log) to its records' carried lrs. Both measured on the published table, leave-one-out
# (bench/recommend_accuracy.py --sweep).
EVIDENCE_SCORE_RATE: Final = 5.0
EVIDENCE_LR_PSEUDOCOUNT: Final = 0.5
# An lr used by another optimizer of the same lr group (Adam and AdamW; SGD momentum and
# Nesterov) counts with this share of its weight.
LR_GROUP_DISCOUNT: Final = 0.5
EVIDENCE_PER_CANDIDATE: Final = 3  # evidence entries shown per candidate
# A schedule (tuner.prior): the similar trainings' summed weight for another schedule must exceed
# this plus their weight for the rules' schedule to replace it. Leave-one-out on the published
# table (bench/recommend_accuracy.py --sweep), the published optimizer's schedule agreed 41% of
# the time at 0 and 0.1, 39% at 0.25, 38% at 0.5, 35% at 1 (36% with the rules alone): the
# similar trainings know better than the rules; 0.1 keeps the faintest ones from overruling them.
EVIDENCE_SCHEDULE_PSEUDOCOUNT: Final = 0.1
# The lrs of similar records of the same optimizer (tuner.prior), carried to the task, also
# reshape its lr range: one outside the range widens it to EVIDENCE_LR_MARGIN beyond (the range
# was wrong there); lrs that agree (weighted spread at most EVIDENCE_LR_AGREEMENT decades,
# summed weight at least 1) pull each side towards EVIDENCE_LR_HALF_WIDTH decades around the
# default, by w / (w + EVIDENCE_LR_PSEUDOCOUNT). On the published table this changes no figure
# of bench/recommend_accuracy.py; on bench/transfer.py's zoo of past jobs, turning the narrowing
# off (agreement -1) or widening its band to 1 decade left every figure within the seeds' noise
# (best@5 6.2% better than the rules alone in all three), so the values stay.
EVIDENCE_LR_MARGIN: Final = 2.0
EVIDENCE_LR_AGREEMENT: Final = 0.25
EVIDENCE_LR_HALF_WIDTH: Final = 0.5


def lr_group(optimizer: str) -> str:
    """Optimizers whose lrs mean the same step size: Adam's family, momentum SGD."""
    if optimizer in ADAM_FAMILY:
        return "adam"
    if optimizer in MOMENTUM_SGD:
        return "momentum_sgd"
    return optimizer


# --------------------------------------------------------------------------------------------
# Derived quantities the rules read
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryUse:
    """Per-device bytes for one optimizer: parameters (trainable and frozen) and gradients
    (trainable only) at the task's precision, optimizer state in fp32. With several devices all
    three are assumed sharded evenly over them (ZeRO stage 3 / FSDP); on one device nothing is."""

    state_bytes: int
    total_bytes: int
    budget_bytes: float | None
    devices: int

    @property
    def fits(self) -> bool | None:
        return None if self.budget_bytes is None else self.total_bytes <= self.budget_bytes

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB

    @property
    def excess_gb(self) -> float:
        return 0.0 if self.budget_bytes is None else (self.total_bytes - self.budget_bytes) / GB

    @property
    def layout(self) -> str:
        """The sharding assumption, in words."""
        if self.devices == 1:
            return "one device, nothing sharded"
        return (f"parameters, gradients and optimizer state assumed sharded over "
                f"{self.devices} devices, ZeRO-3/FSDP style")


def memory_use(task: TaskDescription, spec: OptimizerSpec) -> MemoryUse:
    per = PRECISION_BYTES[task.precision]
    state = spec.state_bytes(task.num_parameters)
    total = (task.total_parameters + task.num_parameters) * per + state
    devices = task.num_devices
    budget = None if task.memory_budget_gb is None else task.memory_budget_gb * GB
    return MemoryUse(-(-state // devices), -(-total // devices), budget, devices)


def adam_state_exceeds_budget(task: TaskDescription) -> bool:
    """Parameters + gradients + Adam's two fp32 moments do not fit one device's budget (sharded
    over the devices, as ``memory_use`` assumes)."""
    if task.memory_budget_gb is None:
        return False
    per = PRECISION_BYTES[task.precision]
    total = ((task.total_parameters + task.num_parameters) * per
             + ADAM_STATE_BYTES * task.num_parameters)
    return total / task.num_devices > task.memory_budget_gb * GB


def gpt3_lr(num_parameters: int) -> float:
    """Adam lr for a model of this size: GPT-3's table, log-log interpolated, flat outside it."""
    sizes = [s for s, _ in GPT3_LR_TABLE]
    if num_parameters <= sizes[0]:
        return GPT3_LR_TABLE[0][1]
    if num_parameters >= sizes[-1]:
        return GPT3_LR_TABLE[-1][1]
    i = bisect.bisect_right(sizes, num_parameters)
    (s0, lr0), (s1, lr1) = GPT3_LR_TABLE[i - 1], GPT3_LR_TABLE[i]
    w = (math.log(num_parameters) - math.log(s0)) / (math.log(s1) - math.log(s0))
    return math.exp(math.log(lr0) + w * (math.log(lr1) - math.log(lr0)))


def small_model_lr_factor(task: TaskDescription) -> float:
    """How far above the registry default (sized for ~2.5e7 parameters) a smaller model's
    Adam-family lr lies on GPT-3's power law, capped at ``SMALL_MODEL_LR_MAX_FACTOR``."""
    ratio = SMALL_MODEL_LR_PARAMETERS / max(task.num_parameters, 1)
    return min(SMALL_MODEL_LR_MAX_FACTOR, max(1.0, float(ratio**GPT3_LR_EXPONENT)))


def batch_factor(task: TaskDescription, power: float, cap: float) -> float:
    """(batch / REFERENCE_BATCH) ** power for batches above the reference, at most ``cap``;
    1 at or below it."""
    ratio = (task.batch_size or REFERENCE_BATCH) / REFERENCE_BATCH
    return min(cap, max(1.0, float(ratio**power)))


def adam_batch_factor(task: TaskDescription) -> float:
    """The Adam family's square-root batch factor, at most ``ADAM_BATCH_FACTOR_MAX`` and so
    that with the small-model rise it stays within ``SMALL_MODEL_LR_MAX_FACTOR``."""
    factor = batch_factor(task, 0.5, ADAM_BATCH_FACTOR_MAX)
    if rises_with_small_size(task):
        factor = min(factor, SMALL_MODEL_LR_MAX_FACTOR / small_model_lr_factor(task))
    return factor


def is_reinforcement_learning(t: TaskDescription) -> bool:
    return t.task_type == "reinforcement_learning"


def is_image_generation(t: TaskDescription) -> bool:
    """Generation by a non-sequence model: GANs, diffusion U-Nets (not language models)."""
    return t.task_type == "generation" and t.model_family not in ("transformer", "rnn")


def is_convolutional_supervised(t: TaskDescription) -> bool:
    """A CNN trained on targets: labels (classification, detection, segmentation, regression),
    or, for a very deep residual tower in reinforcement learning, self-play outcomes (AlphaGo
    Zero's 79 layers train with SGD momentum; Atari's 3-5 layer nets with Adam/RMSProp)."""
    if t.model_family != "cnn" or is_image_generation(t):
        return False
    return not is_reinforcement_learning(t) or (t.num_layers or 0) >= VERY_DEEP_LAYERS


def is_policy_network(t: TaskDescription) -> bool:
    """Reinforcement learning other than a self-play convolutional tower."""
    return is_reinforcement_learning(t) and not is_convolutional_supervised(t)


def is_graph(t: TaskDescription) -> bool:
    return t.model_family == "gnn" and not is_reinforcement_learning(t)


def has_lr_band(t: TaskDescription) -> bool:
    """Kinds of training whose published lrs sit in a band of their own, which the size and
    batch laws do not move: fine-tuning, RL, image generation, graph networks."""
    return bool(t.fine_tuning) or is_policy_network(t) or is_image_generation(t) or is_graph(t)


def is_small_problem(t: TaskDescription) -> bool:
    if t.model_family in ("rnn", "transformer", "gnn"):
        return False
    if is_policy_network(t) or is_image_generation(t):
        return False
    small_data = t.dataset_size is None or t.dataset_size <= SMALL_DATASET
    return t.num_parameters < TINY_PARAMETERS or (
        t.model_family in SIMPLE_FAMILIES and t.num_parameters < SMALL_PARAMETERS and small_data
    )


def is_lm_scale(t: TaskDescription) -> bool:
    lm_like = t.model_family == "transformer" or t.task_type in ("language_modeling", "generation")
    return lm_like and t.num_parameters >= LM_SCALING_PARAMETERS and not has_lr_band(t)


def rises_with_small_size(t: TaskDescription) -> bool:
    """Supervised training from scratch of a small non-recurrent model (the sequence-lstm
    workload's RMSProp diverged at the rise's lr: recurrent nets keep the reference lr)."""
    return (t.num_parameters < SMALL_MODEL_LR_PARAMETERS and t.model_family != "rnn"
            and not has_lr_band(t))


# --------------------------------------------------------------------------------------------
# Rule and adjustment types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Multiply default, low and high of ``hyperparameters`` by ``factor(task)``."""

    optimizers: frozenset[str]
    hyperparameters: tuple[str, ...]
    factor: Callable[[TaskDescription], float]


@dataclass(frozen=True)
class SetRange:
    """Replace ``hyperparameter``'s prior by ``value(task)`` = (default, low, high)."""

    optimizers: frozenset[str]
    hyperparameter: str
    value: Callable[[TaskDescription], tuple[float, float, float]]


@dataclass(frozen=True)
class Derive:
    """``hyperparameter`` = ``source``'s final prior times (default, low, high) multipliers."""

    optimizers: frozenset[str]
    hyperparameter: str
    source: str
    default: float
    low: float
    high: float


Adjustment: TypeAlias = Scale | SetRange | Derive


@dataclass(frozen=True)
class Rule:
    """One row of the table: when ``applies``, ``weights`` multiply scores (``"*"``: every
    optimizer not named) and ``adjust`` changes hyperparameter priors. ``only_for`` narrows the
    row to some optimizers of a task (memory fits)."""

    name: str
    applies: Callable[[TaskDescription], bool]
    rationale: str
    reference: str
    weights: Mapping[str, float] = field(default_factory=dict)
    adjust: tuple[Adjustment, ...] = ()
    only_for: Callable[[TaskDescription, OptimizerSpec], bool] | None = None

    def weight(self, optimizer: str) -> float:
        return self.weights.get(optimizer, self.weights.get("*", 1.0))

    def targets(self, optimizer: str) -> bool:
        """Whether this row can touch ``optimizer`` at all (score or value)."""
        return self.weight(optimizer) != 1.0 or any(optimizer in a.optimizers for a in self.adjust)


# --------------------------------------------------------------------------------------------
# THE TABLE
# --------------------------------------------------------------------------------------------

_SCHMIDT = "Schmidt et al. 2021, Descending through a Crowded Valley"
_NADO = "Nado et al. 2021, A Large Batch Optimizer Reality Check"
_GPT3 = "Brown et al. 2020, Language Models are Few-Shot Learners (GPT-3), Table 2.1"
_GOYAL = "Goyal et al. 2017, Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"
_HE = "He et al. 2016, Deep Residual Learning for Image Recognition"

# Unnormalised prior before any rule: Adam is the general default (Kingma & Ba 2015), AdamW and
# SGD momentum strong seconds; Schmidt et al. 2021 found no optimizer dominates, so none is zero.
BASE_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType({
    "adam": 3.0, "adamw": 2.0, "sgd_momentum": 1.5, "nadam": 1.0, "nesterov": 0.8,
    "radam": 0.6, "rmsprop": 0.5, "lion": 0.5, "adagrad": 0.4, "muon": 0.4,
    "lamb": 0.3, "adafactor": 0.3, "sgd": 0.3,
})
DEFAULT_BASE_WEIGHT: Final = 0.2  # optimizers registered later and not listed above
BASE_REFERENCE: Final = _SCHMIDT

RULES: Final[tuple[Rule, ...]] = (
    Rule(
        name="small_problem",
        applies=is_small_problem,
        weights={"sgd_momentum": 4.0, "sgd": 2.0, "nesterov": 1.5, "adamw": 0.75},
        rationale=f"small/simple problem (< {TINY_PARAMETERS:.0e} parameters, or linear/mlp "
                  f"< {SMALL_PARAMETERS:.0e} with <= {SMALL_DATASET:.0e} examples): SGD with "
                  "momentum is competitive and cheap, Adam a safe second",
        reference="Wilson et al. 2017, The Marginal Value of Adaptive Gradient Methods",
    ),
    Rule(
        name="convolutional",
        applies=is_convolutional_supervised,
        weights={"sgd_momentum": 6.0, "nesterov": 3.0, "rmsprop": 4.0, "adam": 0.5,
                 "adamw": 0.75, "lamb": 0.5, "lion": 0.5},
        rationale="convolutional network trained on labels: SGD with (Nesterov) momentum, lr 0.1 "
                  f"at batch {REFERENCE_BATCH} scaled linearly with the batch, is how ResNets, "
                  "VGG, detectors and self-play towers are trained, at any depth; RMSProp for "
                  "the mobile/efficient families (Inception-v3, MobileNet, EfficientNet)",
        reference=_GOYAL + "; Tan & Le 2019, EfficientNet",
    ),
    Rule(
        name="transformer",
        applies=lambda t: t.model_family == "transformer",
        weights={"adamw": 4.0, "nadam": 1.5, "lamb": 1.5, "lion": 1.5, "adafactor": 1.5,
                 "muon": 1.5, "adam": 0.75, "rmsprop": 0.5, "adagrad": 0.5,
                 "sgd": 0.25, "sgd_momentum": 0.25, "nesterov": 0.25},
        rationale="transformer family: decoupled weight decay (AdamW) is the standard choice; "
                  "SGD trains Transformers poorly",
        reference="Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization",
    ),
    Rule(
        name="very_deep",
        applies=lambda t: (t.num_layers or 0) >= VERY_DEEP_LAYERS
        and t.model_family not in ("cnn", "transformer"),
        weights={"adamw": 3.0, "nadam": 1.5, "adam": 0.75,
                 "sgd": 0.5, "sgd_momentum": 0.5, "nesterov": 0.5},
        rationale=f"very deep network (>= {VERY_DEEP_LAYERS} layers, here {{t.num_layers}}; "
                  "convolutional nets keep SGD, Transformers have their own rule): AdamW "
                  "(NAdamW is the AlgoPerf baseline)",
        reference="Dahl et al. 2023, Benchmarking Neural Network Training Algorithms (AlgoPerf)",
    ),
    Rule(
        name="recurrent",
        applies=lambda t: t.model_family == "rnn",
        weights={"rmsprop": 8.0, "sgd": 0.5, "sgd_momentum": 0.5, "nesterov": 0.5},
        rationale="recurrent network: RMSProp is the traditional choice (evidence it beats Adam "
                  "is weak, so Adam stays close)",
        reference="Graves 2013, Generating Sequences With Recurrent Neural Networks",
    ),
    Rule(
        name="recurrent_language_model",
        applies=lambda t: t.model_family == "rnn" and t.task_type in ("language_modeling",
                                                                      "other"),
        weights={"sgd": 50.0},
        adjust=(SetRange(frozenset({"sgd"}), "lr", lambda t: RECURRENT_SGD_LR),),
        rationale="recurrent language or translation model: plain SGD (lr 0.7 .. 1, clipped; "
                  "averaged SGD at 30) is what the published LSTM language models and seq2seq "
                  "translators used",
        reference="Sutskever et al. 2014, Sequence to Sequence Learning with Neural Networks; "
                  "Merity et al. 2018, Regularizing and Optimizing LSTM Language Models",
    ),
    Rule(
        name="graph",
        applies=is_graph,
        weights={"adam": 2.0, "sgd": 0.5, "sgd_momentum": 0.5, "nesterov": 0.5},
        adjust=(SetRange(ADAM_FAMILY, "lr", lambda t: GRAPH_LR),),
        rationale="graph network: Adam at lr 0.01, full-batch on small graphs, whatever the "
                  "model's size",
        reference="Kipf & Welling 2017, Semi-Supervised Classification with Graph Convolutional "
                  "Networks",
    ),
    Rule(
        name="reinforcement_learning",
        applies=is_policy_network,
        weights={"adam": 3.0, "rmsprop": 4.0, "adamw": 0.5, "sgd": 0.25, "sgd_momentum": 0.25,
                 "nesterov": 0.25, "lamb": 0.5, "lion": 0.5},
        adjust=(SetRange(ADAM_FAMILY | {"rmsprop"}, "lr", lambda t: RL_LR),),
        rationale="reinforcement learning: policy and value networks train with Adam at about "
                  "3e-4 (RMSProp in older work), whatever their size or batch",
        reference="Schulman et al. 2017, Proximal Policy Optimization Algorithms",
    ),
    Rule(
        name="image_generation",
        applies=is_image_generation,
        weights={"adam": 3.0, "rmsprop": 3.0, "sgd": 0.25, "sgd_momentum": 0.25,
                 "nesterov": 0.25, "lamb": 0.5},
        adjust=(SetRange(ADAM_FAMILY, "lr", lambda t: IMAGE_GENERATION_LR),
                SetRange(ADAM_FAMILY, "beta1", lambda t: IMAGE_GENERATION_BETA1)),
        rationale="image generation (GANs, diffusion): Adam with a low lr (1e-4 .. 2e-3) and a "
                  "low beta1 for adversarial training (0 .. 0.5; diffusion keeps 0.9); RMSProp "
                  "for Wasserstein GANs",
        reference="Radford et al. 2016, Unsupervised Representation Learning with Deep "
                  "Convolutional GANs (DCGAN)",
    ),
    Rule(
        name="massive_model",
        applies=lambda t: t.num_parameters >= MASSIVE_PARAMETERS and not t.fine_tuning
        and (t.batch_size is None or t.batch_size >= LARGE_BATCH),
        weights={"lamb": 15.0, "adafactor": 3.0, "lion": 2.0, "adamw": 0.6, "adam": 0.5,
                 "sgd": 0.3, "sgd_momentum": 0.3, "nesterov": 0.3},
        rationale=f"massive model (>= {MASSIVE_PARAMETERS:.0e} parameters) pretraining at a "
                  f"large or unknown batch: LAMB's layer-wise trust ratio (at a known batch "
                  f"under {LARGE_BATCH} the published large models trained with AdamW: GPT-3, "
                  "LLaMA, OPT)",
        reference="You et al. 2020, Large Batch Optimization for Deep Learning: Training BERT in "
                  "76 minutes",
    ),
    Rule(
        name="adam_state_does_not_fit",
        applies=adam_state_exceeds_budget,
        weights={"adafactor": 6.0, "lion": 3.0, "sgd_momentum": 3.0},
        rationale="Adam-family parameters + gradients + fp32 state exceed {t.memory_budget_gb:g} "
                  "GB per device ({mem.layout}): memory-light optimizers (factored or single "
                  "state)",
        reference="Shazeer & Stern 2018, Adafactor: Adaptive Learning Rates with Sublinear "
                  "Memory Cost",
    ),
    Rule(
        name="large_batch",
        applies=lambda t: (t.batch_size or 0) >= LARGE_BATCH,
        weights={"lamb": 8.0, "lion": 3.0, "nesterov": 1.5},
        rationale=f"large global batch (>= {LARGE_BATCH}, here {{t.batch_size}}): LAMB (BERT at "
                  "32k) and Lion gain most; well-tuned Adam/Nesterov match them, so they stay",
        reference=_NADO,
    ),
    Rule(
        name="sparse_features",
        applies=lambda t: t.sparse_features,
        weights={"adagrad": 25.0, "sgd": 15.0, "lion": 0.5, "lamb": 0.5,
                 "sgd_momentum": 0.5, "nesterov": 0.5},
        rationale="sparse features / embeddings: Adagrad's per-coordinate rates favour rare "
                  "features (GloVe); plain SGD's stateless sparse updates second (word2vec, "
                  "DLRM)",
        reference="Duchi et al. 2011, Adaptive Subgradient Methods; Naumov et al. 2019, DLRM",
    ),
    Rule(
        name="language_model_pretraining",
        applies=lambda t: is_lm_scale(t) and t.task_type == "language_modeling",
        weights={"adafactor": 4.0},
        rationale="language-model pretraining: Adafactor (T5, PaLM) is the published "
                  "alternative to AdamW",
        reference="Raffel et al. 2020, T5; Chowdhery et al. 2022, PaLM",
    ),
    Rule(
        name="fine_tuning",
        applies=lambda t: t.fine_tuning_kind == "full",
        weights={"adamw": 3.0, "lamb": 0.3, "muon": 0.3, "lion": 0.5, "adafactor": 0.5},
        adjust=(SetRange(ADAM_FAMILY, "lr", lambda t: FINE_TUNING_LR),),
        rationale="fine-tuning pretrained weights: AdamW with a small lr (1e-5 .. 5e-5 for "
                  "BERT-size models)",
        reference="Devlin et al. 2019, BERT: Pre-training of Deep Bidirectional Transformers",
    ),
    Rule(
        name="fine_tuning_lr_other",
        applies=lambda t: t.fine_tuning_kind == "full",
        adjust=(Scale(SGD_FAMILY | {"rmsprop", "adagrad", "adafactor", "lamb"}, ("lr",),
                      lambda t: 0.1),
                Scale(frozenset({"muon"}), ("lr", "aux_lr"), lambda t: 0.1)),
        rationale="fine-tuning: lr about 10x below training from scratch",
        reference="Kornblith et al. 2019, Do Better ImageNet Models Transfer Better?",
    ),
    Rule(
        name="parameter_efficient_fine_tuning",
        applies=lambda t: t.fine_tuning_kind == "parameter_efficient",
        weights={"adamw": 3.0, "lamb": 0.3, "muon": 0.3, "lion": 0.5},
        adjust=(SetRange(ADAM_FAMILY, "lr", lambda t: PEFT_LR),),
        rationale="parameter-efficient fine-tuning (adapters, LoRA: new weights on a frozen "
                  "model): AdamW at 1e-4 .. 1e-3, a decade above full fine-tuning",
        reference="Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models",
    ),
    Rule(
        name="lr_vs_model_size",
        applies=is_lm_scale,
        adjust=(SetRange(ADAM_FAMILY, "lr",
                         lambda t: (gpt3_lr(t.num_parameters), gpt3_lr(t.num_parameters) / 10,
                                    gpt3_lr(t.num_parameters) * 5)),),
        rationale=f"Transformer/LM of {{t.num_parameters:.3g}} parameters (>= "
                  f"{LM_SCALING_PARAMETERS:.0e}): Adam lr falls with model size (GPT-3 table, "
                  f"log-log interpolated, read at batch {REFERENCE_BATCH})",
        reference=_GPT3,
    ),
    Rule(
        name="small_model_lr",
        applies=rises_with_small_size,
        adjust=(Scale(ADAPTIVE, ("lr",), small_model_lr_factor),),
        rationale=f"small model ({{t.num_parameters:.3g}} parameters): adaptive lr rises as "
                  f"size falls, GPT-3's power law (lr ~ N^-{GPT3_LR_EXPONENT:.2f}) extended below "
                  f"{SMALL_MODEL_LR_PARAMETERS:.2g} parameters, where it meets the default; at "
                  f"most x{SMALL_MODEL_LR_MAX_FACTOR:g} (measured on the built-in workloads: "
                  "bench/lr_sweep.py); not for recurrent nets",
        reference=_GPT3,
    ),
    Rule(
        name="lr_vs_batch_size",
        applies=lambda t: t.batch_size is not None and t.batch_size > REFERENCE_BATCH
        and not has_lr_band(t),
        adjust=(Scale(ADAM_FAMILY, ("lr",), adam_batch_factor),
                Scale(frozenset({"lamb"}), ("lr",),
                      lambda t: batch_factor(t, 0.5, LAMB_BATCH_FACTOR_MAX)),
                Scale(SGD_FAMILY, ("lr",),
                      lambda t: batch_factor(t, 1.0, SGD_BATCH_FACTOR_MAX))),
        rationale=f"batch {{t.batch_size}} above the reference {REFERENCE_BATCH}: lr scaled "
                  f"linearly for SGD (at most x{SGD_BATCH_FACTOR_MAX:g}), by the square root for "
                  f"LAMB (at most x{LAMB_BATCH_FACTOR_MAX:g}) and the Adam family (at most "
                  f"x{ADAM_BATCH_FACTOR_MAX:g}, and x{SMALL_MODEL_LR_MAX_FACTOR:g} with the "
                  "small-model rise); smaller batches keep the reference lr (measured on the "
                  "built-in workloads, bench/lr_sweep.py)",
        reference="Goyal et al. 2017 (linear, SGD); Malladi et al. 2022 (square root, Adam); "
                  "You et al. 2020 (square root, LAMB)",
    ),
    Rule(
        name="lion_from_adamw",
        applies=lambda t: True,
        adjust=(Derive(frozenset({"lion"}), "lr", "adamw", default=1 / 5, low=1 / 10, high=1 / 3),
                Derive(frozenset({"lion"}), "weight_decay", "adamw", default=5, low=3, high=10)),
        rationale="Lion from AdamW: lr 3-10x smaller, weight decay 3-10x larger (lr x wd, the "
                  "decay per step, kept)",
        reference="Chen et al. 2023, Symbolic Discovery of Optimization Algorithms",
    ),
    Rule(
        name="open_ended_training",
        applies=lambda t: t.horizon_unknown,
        weights={"schedulefree_adamw": OPEN_ENDED_SCHEDULE_FREE_ADAMW,
                 "schedulefree_sgd": OPEN_ENDED_SCHEDULE_FREE_SGD},
        rationale="training horizon unknown: schedule-free optimizers need none (constant lr "
                  "after their warm-up, stop at any step) and schedule-free AdamW was "
                  "AlgoPerf 2024's best tuning-free entry; scheduled ones cannot decay towards "
                  "an end they do not know",
        reference="Defazio et al. 2024, The Road Less Scheduled; Kasimbeg et al. 2025, "
                  "Accelerating Neural Network Training: An Analysis of the AlgoPerf Training "
                  "Algorithms Competition",
    ),
    Rule(
        name="schedule_free_lr",
        applies=lambda t: True,
        adjust=(Derive(frozenset({"schedulefree_adamw"}), "lr", "adamw",
                       *SCHEDULE_FREE_ADAMW_LR),
                Derive(frozenset({"schedulefree_sgd"}), "lr", "sgd_momentum",
                       *SCHEDULE_FREE_SGD_LR)),
        rationale="schedule-free lr from the scheduled optimizer's peak: 1-10x AdamW's, 10-50x "
                  "SGD momentum's (the authors' advice; their defaults are 2.5x and 10x)",
        reference="Defazio et al. 2024, The Road Less Scheduled",
    ),
    Rule(
        name="does_not_fit_memory",
        applies=lambda t: t.memory_budget_gb is not None,
        only_for=lambda t, spec: memory_use(t, spec).fits is False,
        weights={"*": MEMORY_PENALTY},
        rationale="does not fit: {mem.total_gb:.3g} GB per device (params + grads in "
                  "{t.precision}, fp32 state; {mem.layout}) exceeds the "
                  "{t.memory_budget_gb:g} GB budget by {mem.excess_gb:.3g} GB",
        reference="Rajbhandari et al. 2020, ZeRO: Memory Optimizations Toward Training Trillion "
                  "Parameter Models",
    ),
)


# --------------------------------------------------------------------------------------------
# THE SCHEDULE TABLE: which lr schedule a candidate's (peak) lr belongs to
# --------------------------------------------------------------------------------------------


def open_ended_warmup_steps(t: TaskDescription) -> int:
    """Warm-up steps without a horizon: ``OPEN_ENDED_WARMUP_STEPS``, at most
    ``OPEN_ENDED_WARMUP_EPOCHS`` epochs when the data and batch sizes are known."""
    steps = OPEN_ENDED_WARMUP_STEPS
    if t.dataset_size is not None and t.batch_size is not None:
        steps = min(steps, OPEN_ENDED_WARMUP_EPOCHS * -(-t.dataset_size // t.batch_size))
    return steps


def is_gpt_style_pretraining(t: TaskDescription) -> bool:
    return (t.model_family == "transformer" and t.task_type == "language_modeling"
            and not t.fine_tuning and t.num_parameters >= LM_SCHEDULE_PARAMETERS)


def is_transformer_seq2seq(t: TaskDescription) -> bool:
    return t.model_family == "transformer" and t.task_type == "other" and not t.fine_tuning


@dataclass(frozen=True)
class ScheduleRule:
    """One row of the schedule table: when ``applies`` (and ``only_for`` the optimizer, when
    given), the candidate's lr is the peak of ``schedule(task)``. ``rationale`` is a
    ``str.format`` template over ``t``, the task."""

    name: str
    applies: Callable[[TaskDescription], bool]
    schedule: Callable[[TaskDescription], Schedule]
    rationale: str
    reference: str
    only_for: Callable[[OptimizerSpec], bool] | None = None
    # Whether the similar published trainings' schedules may replace this row's (not for
    # schedule-free optimizers, nor for open-ended training, which no published one was).
    evidence_may_change: bool = True

    def matches(self, task: TaskDescription, spec: OptimizerSpec) -> bool:
        return (self.only_for is None or self.only_for(spec)) and self.applies(task)


# The schedule of every task no other row claims, of the built-in workloads, and of trials that
# name none (plans stored before schedules).
DEFAULT_SCHEDULE: Final = Schedule("cosine", warmup_fraction=WARMUP_FRACTION,
                                   final_lr_fraction=0.0)
_ALGOPERF = "Dahl et al. 2023, Benchmarking Neural Network Training Algorithms (AlgoPerf)"

SCHEDULE_RULES: Final[tuple[ScheduleRule, ...]] = (
    ScheduleRule(
        name="schedule_free",
        only_for=lambda spec: spec.schedule_free,
        applies=lambda t: True,
        schedule=lambda t: Schedule("none"),
        evidence_may_change=False,
        rationale="schedule-free: no lr schedule and no horizon; the lr is constant after the "
                  "optimizer's own linear warm-up (its warmup_steps hyperparameter, about "
                  f"{WARMUP_FRACTION:.0%} of the steps); evaluate and save in eval mode",
        reference="Defazio et al. 2024, The Road Less Scheduled",
    ),
    ScheduleRule(
        name="open_ended",
        applies=lambda t: t.horizon_unknown,
        schedule=lambda t: Schedule("wsd", warmup_steps=open_ended_warmup_steps(t),
                                    decay_fraction=OPEN_ENDED_DECAY_FRACTION,
                                    decay_shape=OPEN_ENDED_DECAY_SHAPE, final_lr_fraction=0.0),
        evidence_may_change=False,
        rationale="training horizon unknown: warm-up-stable-decay instead of cosine; the lr "
                  "stays at the peak whatever total_steps is, so build the scheduler once the "
                  "end is known (or rebuild it then) and the cool-down takes the last "
                  f"{OPEN_ENDED_DECAY_FRACTION:.0%}; a checkpoint from the stable phase can be "
                  "cooled down at any length; the warm-up is in steps (2000 as LLaMA and OPT, at "
                  "most 5 epochs)",
        reference="Hägele et al. 2024, Scaling Laws and Compute-Optimal Training Beyond Fixed "
                  "Training Durations; Hu et al. 2024, MiniCPM",
    ),
    ScheduleRule(
        name="lm_pretraining",
        applies=is_gpt_style_pretraining,
        schedule=lambda t: Schedule("cosine", warmup_fraction=LM_WARMUP_FRACTION,
                                    final_lr_fraction=LM_FINAL_LR_FRACTION),
        rationale="GPT-style LM pretraining: cosine decay to 10% of the peak after a short "
                  "warm-up (1%: Pythia; LLaMA's 2000 steps)",
        reference="Brown et al. 2020 (GPT-3); Touvron et al. 2023 (LLaMA); Biderman et al. "
                  "2023 (Pythia)",
    ),
    ScheduleRule(
        name="fine_tuning",
        applies=lambda t: bool(t.fine_tuning),
        schedule=lambda t: Schedule("linear", warmup_fraction=FINE_TUNING_WARMUP_FRACTION,
                                    final_lr_fraction=0.0),
        rationale="fine-tuning (BERT-style, adapters, LoRA): linear decay to 0 after a 6% "
                  "warm-up",
        reference="Devlin et al. 2019 (BERT); Liu et al. 2019 (RoBERTa), Table 10; Hu et al. "
                  "2021 (LoRA)",
    ),
    ScheduleRule(
        name="transformer_seq2seq",
        applies=is_transformer_seq2seq,
        schedule=lambda t: Schedule("inverse_sqrt", warmup_steps=SEQ2SEQ_WARMUP_STEPS),
        rationale="Transformer sequence-to-sequence: inverse square root decay after "
                  f"{SEQ2SEQ_WARMUP_STEPS} warm-up steps; the lr is the value at the end of the "
                  "warm-up",
        reference="Vaswani et al. 2017, Attention Is All You Need, Sec. 5.3",
    ),
    ScheduleRule(
        name="convolutional",
        applies=is_convolutional_supervised,
        schedule=lambda t: DEFAULT_SCHEDULE,
        rationale="convolutional network: cosine decay to 0 (as good as the older step decay, "
                  "lr / 10 at 50% and 75% of training, He et al. 2016) after a 5% warm-up "
                  "(Goyal et al.'s 5 epochs, needed at large batches)",
        reference="Loshchilov & Hutter 2017, SGDR: Stochastic Gradient Descent with Warm "
                  f"Restarts; {_GOYAL}; {_HE}",
    ),
    ScheduleRule(
        name="reinforcement_learning",
        applies=is_policy_network,
        schedule=lambda t: Schedule("constant"),
        rationale="reinforcement learning: a constant lr, as DQN, SAC and PPO on MuJoCo "
                  "trained (PPO on Atari anneals it linearly)",
        reference="Mnih et al. 2015 (DQN); Haarnoja et al. 2018 (SAC); Schulman et al. 2017 "
                  "(PPO)",
    ),
    ScheduleRule(
        name="image_generation",
        applies=is_image_generation,
        schedule=lambda t: Schedule("constant"),
        rationale="image generation: a constant lr (GANs: DCGAN; diffusion models too: DiT, "
                  "and DDPM and Stable Diffusion after a 5k-10k step warm-up)",
        reference="Radford et al. 2016 (DCGAN); Ho et al. 2020 (DDPM); Peebles & Xie 2023 "
                  "(DiT)",
    ),
    ScheduleRule(
        name="default",
        applies=lambda t: True,
        schedule=lambda t: DEFAULT_SCHEDULE,
        rationale=f"{WARMUP_FRACTION:.0%} linear warm-up, then cosine decay to 0: the AlgoPerf "
                  "baselines' schedule",
        reference=_ALGOPERF,
    ),
)


def schedule_rule(task: TaskDescription, spec: OptimizerSpec) -> ScheduleRule:
    """The first row of ``SCHEDULE_RULES`` for this task and optimizer (the last always
    applies)."""
    return next(rule for rule in SCHEDULE_RULES if rule.matches(task, spec))
