"""The built-in workloads: small, fast (about a second per trial on one CPU core at the default
budget), deterministic for a seed, and discriminative (optimizers and learning rates reach clearly
different values). Every one minimises its metric. The supervised ones train with linear warm-up
and cosine decay of the lr (``tuner.workloads.training``) unless the trial names another
schedule; Rosenbrock runs at a constant lr unless the trial names one. Schedule-free optimizers
run without a schedule (unless the trial names one) and are measured at their evaluation point.

Data ship with scikit-learn (``load_digits``, ``load_diabetes``; never downloaded) or are
generated from a fixed data seed, so trials differ only by their initialisation and shuffling
seed. Datasets are built once per process and kept as CPU tensors; each trial copies them to its
device.

==================  =========================================================  =================
name                what                                                       metric
==================  =========================================================  =================
rosenbrock          the optimizer minimises the 10-D Rosenbrock function       objective
digits-mlp          MLP 64-64-10 on scikit-learn's 8x8 digits                  val_loss (CE)
digits-cnn          two-conv CNN on the same digits                            val_loss (CE)
diabetes-mlp        MLP 10-32-32-1 regression on load_diabetes                 val_mse
sequence-lstm       LSTM: does token ``a`` ever come right before ``b``?       val_loss (CE)
tiny-transformer    2-layer causal Transformer LM on Markov-prefix/copy text   val_loss / token
sparse-logistic     logistic regression on 10k Zipf-distributed sparse ids    val_loss (BCE)
==================  =========================================================  =================
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import optimizers
from optimizers.schedules import Schedule
from tuner.task import TaskDescription
from tuner.workloads.base import Reporter, TrialConfig, Workload, report_epoch
from tuner.workloads.training import Dataset, Split, SupervisedWorkload, count_parameters

# --------------------------------------------------------------------------------------------
# rosenbrock


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """sum_i 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2; minimum 0 at (1, ..., 1)."""
    head, tail = x[:-1], x[1:]
    return (100.0 * (tail - head * head) ** 2 + (1.0 - head) ** 2).sum()


class Rosenbrock(Workload):
    """The optimizer minimises the N-D Rosenbrock function directly (no data, no model).

    The start is the classic (-1.5, 2) pattern repeated, jittered by the seed (std 0.05). One
    "epoch" is ``steps_per_epoch`` optimizer steps. The metric is ``log10(1 + f(x))``: monotone in
    f, 0 at the optimum and on a scale TPE handles well (f itself spans many orders of magnitude
    between good and bad settings).

    It runs at a constant lr unless the trial names a schedule, and its tuning jobs keep it
    constant (``schedule_override``): with exact gradients an lr decay only slows the descent
    down the valley within the budget (measured: Adam at lr 0.3 ends at 1e-9 at a constant lr,
    at 0.61 with 5% warm-up + cosine; at lr 0.1, 0.11 against 1.02).
    """

    name = "rosenbrock"
    dims: ClassVar[int] = 10
    steps_per_epoch: ClassVar[int] = 100
    summary = (
        f"Minimise the {dims}-D Rosenbrock function from (-1.5, 2, ...); "
        f"objective = log10(1 + f), {steps_per_epoch} steps per epoch."
    )
    task = TaskDescription(model_family="other", task_type="other", num_parameters=dims)
    metric = "objective"
    default_epochs = 20
    schedule_override = Schedule("constant")

    def start(self, seed: int) -> torch.Tensor:
        pattern = torch.tensor([-1.5, 2.0]).repeat((self.dims + 1) // 2)[: self.dims]
        jitter = torch.randn(self.dims, generator=torch.Generator().manual_seed(seed))
        return pattern + 0.05 * jitter

    def run(self, config: TrialConfig, report: Reporter) -> float:
        epochs = self.resolve_epochs(config)
        x = nn.Parameter(self.start(config.seed).to(config.device))
        optimizer = optimizers.create(config.optimizer, [x], **config.hyperparameters)
        scheduler = self.scheduler(config, optimizer, epochs * self.steps_per_epoch)
        value = math.nan
        for epoch in range(epochs):
            for _ in range(self.steps_per_epoch):
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(rosenbrock(x))
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            with torch.no_grad(), optimizers.evaluation_mode(optimizer):
                value = math.log10(1.0 + float(rosenbrock(x)))
            if not report_epoch(report, epoch, value):
                return math.nan
        return value


# --------------------------------------------------------------------------------------------
# scikit-learn data

_DATA_SEED = 20240917  # fixed: every trial sees the same data, whatever its seed
DIGITS_TRAIN = 1797 - 359  # load_digits rows minus the 20% validation split
DIABETES_TRAIN = 442 - 88  # load_diabetes rows minus the 20% validation split


def _split_index(n: int, val_fraction: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.RandomState(_DATA_SEED + salt).permutation(n)
    n_val = round(n * val_fraction)
    return order[n_val:], order[:n_val]


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits pixels scaled to [0, 1] (float32) and labels; fixed 80/20 train/val split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    train, val = _split_index(len(y), 0.2, salt=1)
    xt = torch.as_tensor(x / 16.0, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    return xt[train], yt[train], xt[val], yt[val]


@functools.cache
def _diabetes() -> Dataset:
    """Diabetes features and target, standardised with the training split's statistics."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    train, val = _split_index(len(y), 0.2, salt=2)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = (x - mean) / std
    y = (y - y[train].mean()) / y[train].std()
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    return Dataset(Split((xt[train],), yt[train]), Split((xt[val],), yt[val]))


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


class DigitsMLP(SupervisedWorkload):
    name = "digits-mlp"
    summary = "MLP 64-64-10 (ReLU) on scikit-learn's 8x8 digits; validation cross-entropy."
    hidden: ClassVar[int] = 64
    batch_size = 32
    train_size = DIGITS_TRAIN
    metric = "val_loss"
    default_epochs = 15

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 10))

    def make_dataset(self) -> Dataset:
        xt, yt, xv, yv = _digits()
        return Dataset(Split((xt,), yt), Split((xv,), yv))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(output, target)


class DigitsCNN(SupervisedWorkload):
    name = "digits-cnn"
    summary = "Tiny CNN (conv16-conv32-pool-linear) on scikit-learn's 8x8 digits; validation CE."
    batch_size = 32
    train_size = DIGITS_TRAIN
    metric = "val_loss"
    default_epochs = 10

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )

    def make_dataset(self) -> Dataset:
        xt, yt, xv, yv = _digits()
        return Dataset(Split((xt.reshape(-1, 1, 8, 8),), yt), Split((xv.reshape(-1, 1, 8, 8),), yv))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(output, target)


class DiabetesMLP(SupervisedWorkload):
    name = "diabetes-mlp"
    summary = "MLP 10-32-32-1 regression on scikit-learn's diabetes data; validation MSE (std. y)."
    batch_size = 32
    train_size = DIABETES_TRAIN
    metric = "val_mse"
    default_epochs = 40

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1),
            nn.Flatten(0),
        )

    def make_dataset(self) -> Dataset:
        return _diabetes()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)


# --------------------------------------------------------------------------------------------
# sequence-lstm


class _LSTMClassifier(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.embed(tokens))
        out: torch.Tensor = self.head(h[-1])
        return out


class SequenceLSTM(SupervisedWorkload):
    """Binary classification of token sequences: does token ``a`` ever come right before ``b``?

    Uniform tokens over a small vocabulary; the length is chosen so both classes are about equally
    frequent. Solving it needs memory across steps, not just counts. A fixed ``label_noise``
    fraction of labels is flipped, so the loss has a floor (about 0.33 nats) and a relative gap
    between settings measures learning, not rounding near 0.
    """

    name = "sequence-lstm"
    vocab: ClassVar[int] = 6
    length: ClassVar[int] = 24
    pattern: ClassVar[tuple[int, int]] = (1, 4)
    label_noise: ClassVar[float] = 0.1
    embed: ClassVar[int] = 8
    hidden: ClassVar[int] = 32
    train_size = 2048
    n_val: ClassVar[int] = 512
    summary = (
        f"LSTM({hidden}) classifies whether token {pattern[0]} is ever followed by {pattern[1]} "
        f"in random length-{length} sequences ({label_noise:.0%} of labels flipped); "
        "validation cross-entropy."
    )
    batch_size = 64
    metric = "val_loss"
    default_epochs = 10

    def build_model(self) -> nn.Module:
        return _LSTMClassifier(self.vocab, self.embed, self.hidden, 2)

    def make_dataset(self) -> Dataset:
        rs = np.random.RandomState(_DATA_SEED + 3)
        tokens = rs.randint(0, self.vocab, size=(self.train_size + self.n_val, self.length))
        a, b = self.pattern
        labels = ((tokens[:, :-1] == a) & (tokens[:, 1:] == b)).any(axis=1)
        labels ^= rs.random_sample(len(labels)) < self.label_noise
        x = torch.as_tensor(tokens, dtype=torch.long)
        y = torch.as_tensor(labels, dtype=torch.long)
        n = self.train_size
        return Dataset(Split((x[:n],), y[:n]), Split((x[n:],), y[n:]))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(output, target)


# --------------------------------------------------------------------------------------------
# tiny-transformer


class _Block(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.ff(self.norm2(x))
        return out


class _TinyLM(nn.Module):
    def __init__(self, vocab: int, context: int, d_model: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Parameter(torch.randn(context, d_model) * 0.02)
        self.blocks = nn.Sequential(*(_Block(d_model, heads, 2 * d_model) for _ in range(layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tokens(tokens) + self.positions[: tokens.shape[1]]
        out: torch.Tensor = self.head(self.norm(self.blocks(x)))
        return out


class TinyTransformer(SupervisedWorkload):
    """Next-token prediction on ``prefix SEP prefix``, the prefix drawn from a fixed sparse Markov
    chain: the prefix is learnable from bigram statistics, the copy only through attention, so
    the loss falls in two stages and separates weak from strong settings.
    """

    name = "tiny-transformer"
    symbols: ClassVar[int] = 16
    prefix: ClassVar[int] = 10
    d_model: ClassVar[int] = 32
    layers: ClassVar[int] = 2
    heads: ClassVar[int] = 2
    train_size = 2048
    n_val: ClassVar[int] = 256
    summary = (
        f"{layers}-layer causal Transformer (d_model {d_model}) language model on "
        f"'Markov prefix, SEP, copy' sequences; validation loss per token."
    )
    batch_size = 64
    metric = "val_loss"
    default_epochs = 10

    @property
    def vocab(self) -> int:
        return self.symbols + 1  # + SEP

    def build_model(self) -> nn.Module:
        return _TinyLM(self.vocab, 2 * self.prefix + 1, self.d_model, self.layers, self.heads)

    def make_dataset(self) -> Dataset:
        rs = np.random.RandomState(_DATA_SEED + 4)
        s = self.symbols
        transition = np.zeros((s, s))
        for row in transition:  # three likely successors per symbol
            row[rs.choice(s, 3, replace=False)] = rs.dirichlet(np.ones(3))
        n = self.train_size + self.n_val
        prefix = np.empty((n, self.prefix), dtype=np.int64)
        prefix[:, 0] = rs.randint(0, s, size=n)
        cumulative = transition.cumsum(axis=1)
        for t in range(1, self.prefix):
            u = rs.random_sample(n)[:, None]
            prefix[:, t] = np.minimum((u > cumulative[prefix[:, t - 1]]).sum(axis=1), s - 1)
        seq = np.concatenate([prefix, np.full((n, 1), s), prefix], axis=1)
        x = torch.as_tensor(seq[:, :-1])
        y = torch.as_tensor(seq[:, 1:])
        m = self.train_size
        return Dataset(Split((x[:m],), y[:m]), Split((x[m:],), y[m:]))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(output, target)


# --------------------------------------------------------------------------------------------
# sparse-logistic


class _BagLogistic(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.weights = nn.EmbeddingBag(vocab, 1, mode="sum", sparse=False)
        nn.init.zeros_(self.weights.weight)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.weights(ids).squeeze(-1) + self.bias
        return out


class SparseLogistic(SupervisedWorkload):
    """Logistic regression over bags of Zipf-distributed feature ids (most ids are rare), labels
    drawn from a fixed ground-truth weight vector. Per-coordinate adaptive methods shine here.
    """

    name = "sparse-logistic"
    vocab: ClassVar[int] = 10_000
    active: ClassVar[int] = 16
    zipf: ClassVar[float] = 1.1
    signal: ClassVar[float] = 4.0  # standard deviation of the true logits
    train_size = 8192
    n_val: ClassVar[int] = 2048
    summary = (
        f"Logistic regression (EmbeddingBag sum) over {vocab} sparse Zipf-distributed ids, "
        f"{active} per example; validation binary cross-entropy."
    )
    batch_size = 128
    metric = "val_loss"
    default_epochs = 10

    def build_model(self) -> nn.Module:
        return _BagLogistic(self.vocab)

    def make_dataset(self) -> Dataset:
        rs = np.random.RandomState(_DATA_SEED + 5)
        freq = 1.0 / np.arange(1, self.vocab + 1) ** self.zipf
        n = self.train_size + self.n_val
        ids = rs.choice(self.vocab, size=(n, self.active), p=freq / freq.sum())
        truth = rs.standard_normal(self.vocab)
        logits = truth[ids].sum(axis=1) * (self.signal / math.sqrt(self.active))
        labels = rs.random_sample(n) < 1.0 / (1.0 + np.exp(-logits))
        x = torch.as_tensor(ids, dtype=torch.long)
        y = torch.as_tensor(labels, dtype=torch.float32)
        m = self.train_size
        return Dataset(Split((x[:m],), y[:m]), Split((x[m:],), y[m:]))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output, target)


# --------------------------------------------------------------------------------------------
# task descriptions, from the models actually trained


def _task(workload: SupervisedWorkload, **fields: object) -> TaskDescription:
    model = workload.build_model()
    return TaskDescription.model_validate({
        "num_parameters": count_parameters(model),
        "dataset_size": workload.train_size,
        "batch_size": workload.batch_size,
        **fields,
    })


DigitsMLP.task = _task(DigitsMLP(), model_family="mlp", task_type="classification", num_layers=2)
DigitsCNN.task = _task(DigitsCNN(), model_family="cnn", task_type="classification", num_layers=3)
DiabetesMLP.task = _task(DiabetesMLP(), model_family="mlp", task_type="regression", num_layers=3)
SequenceLSTM.task = _task(SequenceLSTM(), model_family="rnn", num_layers=1)
TinyTransformer.task = _task(
    TinyTransformer(), model_family="transformer", task_type="language_modeling",
    num_layers=TinyTransformer.layers,
)
SparseLogistic.task = _task(
    SparseLogistic(), model_family="linear", task_type="classification", num_layers=1,
    sparse_features=True,
)

BUILTIN_WORKLOADS: tuple[type[Workload], ...] = (
    Rosenbrock, DigitsMLP, DigitsCNN, DiabetesMLP, SequenceLSTM, TinyTransformer, SparseLogistic,
)
