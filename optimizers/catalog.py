"""The built-in catalog: torch's optimizers wrapped (not rewritten), plus optpilot's own LAMB,
Lion and schedule-free AdamW/SGD. Ranges come from the AlgoPerf baselines (Dahl et al. 2023) and
the papers behind each optimizer, state sizes from their algorithms; each record cites its
sources.

Implementation choice (measured on 2-core CPUs, 25M fp32 parameters, see bench/optimizer_step.py):
on CPU torch's ``fused=True`` kernels win for Adam/AdamW/SGD/Adagrad (2.5-3.5x the per-tensor
loop), the per-tensor loop beats ``foreach`` for everything else but RAdam; on CUDA ``fused`` where
torch has it, ``foreach`` otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from optimizers._checks import check_steps
from optimizers.lamb import Lamb
from optimizers.lion import Lion
from optimizers.registry import (
    Builder,
    OptimizerSpec,
    ParamsT,
    SearchRange,
    register,
)
from optimizers.schedulefree_adamw import ScheduleFreeAdamW
from optimizers.schedulefree_sgd import ScheduleFreeSGD

_FUSED_DEVICES: dict[str, tuple[str, ...]] = {
    "adam": ("cpu", "cuda"),
    "adamw": ("cpu", "cuda"),
    "sgd": ("cpu", "cuda"),
    "adagrad": ("cpu",),
}
_CPU_FOREACH = frozenset({"radam"})


def _materialize(params: ParamsT) -> list[Any]:
    """The parameters as a list (param groups with list-valued "params"), safe to read twice."""
    out: list[Any] = []
    for item in params:
        if isinstance(item, dict):
            group_params = item["params"]
            group_params = [group_params] if isinstance(group_params, torch.Tensor) else list(
                group_params)
            out.append({**item, "params": group_params})
        else:
            out.append(item)
    return out


def _tensors(params: list[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for item in params:
        out.extend(item["params"] if isinstance(item, dict) else [item])
    return out


def implementation_kwargs(torch_name: str, params: list[Any]) -> dict[str, bool]:
    """``fused``/``foreach`` flags giving torch's fastest correct path for these parameters."""
    tensors = _tensors(params)
    device_types = {p.device.type for p in tensors}
    if len(device_types) != 1 or not all(p.is_floating_point() for p in tensors):
        return {}  # torch's own default copes with mixed devices and dtypes
    device = device_types.pop()
    # torch 2.13's fused CPU SGD silently skips bf16/fp16 updates: fused on CPU only at full width.
    full_width = all(p.dtype in (torch.float32, torch.float64) for p in tensors)
    if device in _FUSED_DEVICES.get(torch_name, ()) and (device != "cpu" or full_width):
        return {"fused": True}
    if device == "cpu":
        return {"foreach": torch_name in _CPU_FOREACH}
    return {"foreach": True}


def _torch_builder(torch_name: str, cls: type[torch.optim.Optimizer], **fixed: Any) -> Builder:
    """Builder that maps flat names onto ``cls``'s keyword arguments."""

    def build(params: ParamsT, hp: dict[str, float]) -> torch.optim.Optimizer:
        params = _materialize(params)
        kwargs: dict[str, Any] = dict(fixed)
        for name, value in hp.items():
            if name in ("beta1", "beta2"):
                continue
            kwargs[name] = value
        if "beta1" in hp:
            kwargs["betas"] = (hp["beta1"], hp["beta2"])
        kwargs.update(implementation_kwargs(torch_name, params))
        return cls(params, **kwargs)

    return build


def _adafactor_builder(params: ParamsT, hp: dict[str, float]) -> torch.optim.Optimizer:
    params = _materialize(params)
    flags = implementation_kwargs("adafactor", params)
    flags.pop("fused", None)
    return torch.optim.Adafactor(
        params, lr=hp["lr"], beta2_decay=hp["beta2_decay"], weight_decay=hp["weight_decay"],
        eps=(None, hp["eps"]), **flags,
    )


def _lamb_builder(params: ParamsT, hp: dict[str, float]) -> torch.optim.Optimizer:
    return Lamb(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                weight_decay=hp["weight_decay"])


def _lion_builder(params: ParamsT, hp: dict[str, float]) -> torch.optim.Optimizer:
    return Lion(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                weight_decay=hp["weight_decay"])


def _schedulefree_adamw_builder(params: ParamsT, hp: dict[str, float]) -> torch.optim.Optimizer:
    return ScheduleFreeAdamW(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                             weight_decay=hp["weight_decay"],
                             warmup_steps=check_steps("warmup_steps", hp["warmup_steps"]))


def _schedulefree_sgd_builder(params: ParamsT, hp: dict[str, float]) -> torch.optim.Optimizer:
    return ScheduleFreeSGD(params, lr=hp["lr"], momentum=hp["momentum"],
                           weight_decay=hp["weight_decay"],
                           warmup_steps=check_steps("warmup_steps", hp["warmup_steps"]))


_KINGMA = "Kingma & Ba 2015, Adam: A Method for Stochastic Optimization"
_LOSHCHILOV = "Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization"
_ALGOPERF = "Dahl et al. 2023, Benchmarking Neural Network Training Algorithms (AlgoPerf)"
_SUTSKEVER = "Sutskever et al. 2013, On the importance of initialization and momentum"
_GPT3 = "Brown et al. 2020, Language Models are Few-Shot Learners (GPT-3)"

# Ranges shared by the Adam family (AlgoPerf baseline space; 1-beta searched on a log scale).
_ADAM_LR = SearchRange(1e-4, 1e-2)
_ADAM_WD = SearchRange(5e-3, 1.0)
_ADAM_EPS = SearchRange(1e-10, 1e-6)
_BETA2 = SearchRange(0.99, 0.9999, complement=True)
_SGD_MOMENTUM = SearchRange(0.7, 0.995, complement=True)
_SGD_LR = SearchRange(2e-2, 5.0)
_SGD_WD = SearchRange(1e-7, 5e-5)
# The Tuning Playbook's order (Godbolt et al. 2023): lr, then beta1. Measured against
# weight decay second for the decoupled optimizers (Loshchilov & Hutter 2019: its best value
# depends on data size and training length), bench/tuning_efficiency.py, one machine: that order
# found better 50-trial bests on the digits workloads (0.0753 vs 0.0827, 0.0148 vs 0.0191) but
# worse on diabetes-mlp and tiny-transformer, and sequence-lstm then needed 21 trials instead of
# 11 to reach plain TPE's 50-trial best; so every Adam-family optimizer follows that order.
_ADAM_ORDER = ("lr", "beta1", "weight_decay", "eps", "beta2")
# AdamW's and NAdamW's decoupled weight decay: 0.1, not torch's 0.01 (the bottom of AlgoPerf's
# 5e-3..1 range): GPT-3 and the AlgoPerf NAdamW baseline (0.08) train with about 0.1; on the
# built-in workloads AdamW's is better or equal to 0.01 at the prior's lr (bench/lr_sweep.py
# --weight-decay).
_DECOUPLED_WEIGHT_DECAY = 0.1

SGD = register(OptimizerSpec(
    name="sgd", family="sgd",
    when_to_use="Plain SGD: the cheapest step and no state; a baseline for small convex problems.",
    build=_torch_builder("sgd", torch.optim.SGD),
    defaults={"lr": 0.1, "weight_decay": 0.0},
    search_space={"lr": SearchRange(1e-3, 5.0), "weight_decay": _SGD_WD},
    state_bytes_per_param=0, references=("Robbins & Monro 1951",),
    tuning_order=("lr", "weight_decay"),
))
SGD_MOMENTUM = register(OptimizerSpec(
    name="sgd_momentum", family="sgd",
    when_to_use="SGD with heavy-ball momentum: competitive and cheap on small/simple problems, "
                "CNNs with a tuned schedule.",
    build=_torch_builder("sgd", torch.optim.SGD),
    defaults={"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
    search_space={"lr": _SGD_LR, "momentum": _SGD_MOMENTUM, "weight_decay": _SGD_WD},
    state_bytes_per_param=4, references=("Polyak 1964", _SUTSKEVER, _ALGOPERF),
    tuning_order=("lr", "momentum", "weight_decay"),
))
NESTEROV = register(OptimizerSpec(
    name="nesterov", family="sgd",
    when_to_use="Nesterov momentum: matches LAMB/LARS at large batch when well tuned (Nado 2021).",
    build=_torch_builder("sgd", torch.optim.SGD, nesterov=True),
    defaults={"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
    search_space={"lr": _SGD_LR, "momentum": _SGD_MOMENTUM, "weight_decay": _SGD_WD},
    state_bytes_per_param=4,
    references=("Nesterov 1983", _SUTSKEVER, "Nado et al. 2021, A Large Batch Optimizer Reality "
                "Check"),
    tuning_order=("lr", "momentum", "weight_decay"),
))
RMSPROP = register(OptimizerSpec(
    name="rmsprop", family="adaptive",
    when_to_use="RMSProp: the traditional choice for recurrent networks and RL (Graves 2013, DQN).",
    build=_torch_builder("rmsprop", torch.optim.RMSprop),
    defaults={"lr": 1e-3, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
    search_space={"lr": SearchRange(1e-5, 1e-2), "alpha": SearchRange(0.9, 0.99, complement=True)},
    state_bytes_per_param=4,
    references=("Tieleman & Hinton 2012, Lecture 6.5 RMSProp",
                "Graves 2013, Generating Sequences With Recurrent Neural Networks"),
    tuning_order=("lr", "alpha"),
))
ADAGRAD = register(OptimizerSpec(
    name="adagrad", family="adaptive",
    when_to_use="Adagrad: per-coordinate rates for sparse features and embeddings.",
    build=_torch_builder("adagrad", torch.optim.Adagrad),
    defaults={"lr": 1e-2, "eps": 1e-10, "weight_decay": 0.0},
    search_space={"lr": SearchRange(1e-3, 1.0)},
    state_bytes_per_param=4,
    references=("Duchi et al. 2011, Adaptive Subgradient Methods",),
    tuning_order=("lr",),
))
ADAM = register(OptimizerSpec(
    name="adam", family="adaptive",
    when_to_use="Adam: the safe general default; coupled L2 weight decay.",
    build=_torch_builder("adam", torch.optim.Adam),
    defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    search_space={"lr": _ADAM_LR, "beta1": SearchRange(0.5, 0.98, complement=True),
                  "beta2": _BETA2, "eps": _ADAM_EPS, "weight_decay": SearchRange(1e-6, 1e-3)},
    state_bytes_per_param=8, references=(_KINGMA,),
    tuning_order=("lr", "beta1", "eps", "beta2", "weight_decay"),
))
ADAMW = register(OptimizerSpec(
    name="adamw", family="adaptive",
    when_to_use="AdamW: decoupled weight decay; the standard for Transformers and deep nets.",
    build=_torch_builder("adamw", torch.optim.AdamW),
    defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
              "weight_decay": _DECOUPLED_WEIGHT_DECAY},
    search_space={"lr": _ADAM_LR, "beta1": SearchRange(0.5, 0.98, complement=True),
                  "beta2": _BETA2, "eps": _ADAM_EPS, "weight_decay": _ADAM_WD},
    state_bytes_per_param=8, references=(_LOSHCHILOV, _ALGOPERF, _GPT3),
    tuning_order=_ADAM_ORDER,
))
NADAM = register(OptimizerSpec(
    name="nadam", family="adaptive",
    when_to_use="NAdamW (Nesterov Adam, decoupled decay): the AlgoPerf baseline.",
    build=_torch_builder("nadam", torch.optim.NAdam, decoupled_weight_decay=True),
    defaults={"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
              "weight_decay": _DECOUPLED_WEIGHT_DECAY},
    search_space={"lr": _ADAM_LR, "beta1": SearchRange(0.9, 0.996, complement=True),
                  "beta2": _BETA2, "eps": _ADAM_EPS, "weight_decay": _ADAM_WD},
    state_bytes_per_param=8,
    references=("Dozat 2016, Incorporating Nesterov Momentum into Adam", _ALGOPERF),
    tuning_order=_ADAM_ORDER,
))
RADAM = register(OptimizerSpec(
    name="radam", family="adaptive",
    when_to_use="RAdam: Adam with a rectified warm-up of the adaptive rate; robust without warmup.",
    build=_torch_builder("radam", torch.optim.RAdam, decoupled_weight_decay=True),
    defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    search_space={"lr": _ADAM_LR, "beta1": SearchRange(0.5, 0.98, complement=True),
                  "beta2": _BETA2, "eps": _ADAM_EPS, "weight_decay": _ADAM_WD},
    state_bytes_per_param=8,
    references=("Liu et al. 2020, On the Variance of the Adaptive Learning Rate and Beyond",),
    tuning_order=_ADAM_ORDER,
))
ADAFACTOR = register(OptimizerSpec(
    name="adafactor", family="factored",
    when_to_use="Adafactor: factored second moment, state O(rows+cols) per matrix; for models "
                "whose Adam state does not fit (T5, PaLM).",
    build=_adafactor_builder,
    defaults={"lr": 1e-2, "beta2_decay": -0.8, "eps": 1e-3, "weight_decay": 0.0},
    search_space={"lr": SearchRange(1e-4, 1e-1), "weight_decay": SearchRange(1e-3, 1.0)},
    # Factored: about (rows + cols) per matrix; ~0.1 byte/param for typical hidden sizes.
    state_bytes_per_param=0.1,
    references=("Shazeer & Stern 2018, Adafactor: Adaptive Learning Rates with Sublinear Memory "
                "Cost", _ALGOPERF),
    tuning_order=("lr", "weight_decay"),
))
LAMB = register(OptimizerSpec(
    name="lamb", family="layerwise",
    when_to_use="LAMB: Adam with a per-tensor trust ratio; large global batches (BERT at 32k).",
    build=_lamb_builder,
    defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.01},
    search_space={"lr": _ADAM_LR, "beta1": SearchRange(0.7, 0.95, complement=True),
                  "beta2": _BETA2, "eps": _ADAM_EPS, "weight_decay": SearchRange(1e-3, 1.0)},
    state_bytes_per_param=8,
    references=("You et al. 2020, Large Batch Optimization for Deep Learning: Training BERT in "
                "76 minutes", _ALGOPERF),
    tuning_order=_ADAM_ORDER,
))
LION = register(OptimizerSpec(
    name="lion", family="sign",
    when_to_use="Lion: sign of an interpolated momentum, one state tensor (half Adam's memory); "
                "lr 3-10x below AdamW's, weight decay 3-10x above; gains grow with batch size.",
    build=_lion_builder,
    defaults={"lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1},
    search_space={"lr": SearchRange(1e-5, 3e-3), "beta1": SearchRange(0.8, 0.95, complement=True),
                  "weight_decay": SearchRange(1e-2, 10.0)},
    state_bytes_per_param=4,
    references=("Chen et al. 2023, Symbolic Discovery of Optimization Algorithms",),
    tuning_order=("lr", "weight_decay", "beta1"),
))

# Schedule-free: the authors' package defaults (warmup_steps 0 there too: a warm-up in steps
# depends on the run's length, which the record cannot know). The authors' README: lrs 1-10x a
# scheduled AdamW's and 10-50x a scheduled SGD's; the interpolation 0.9 works on most problems,
# 0.95-0.98 for very long runs. The ranges below follow that: AdamW's lr range (AlgoPerf,
# 1e-4..1e-2) times 1-10; SGD's a decade either side of the default 1.0 (10-50x the 0.02-0.1
# that plain SGD with momentum starts from); beta1/momentum from 0.8 to the README's 0.98; the
# rest are AdamW's and SGD's AlgoPerf ranges.
_SCHEDULE_FREE = ("Defazio et al. 2024, The Road Less Scheduled (schedule-free optimizers; "
                  "AlgoPerf 2024 self-tuning winner)")
_SCHEDULE_FREE_INTERPOLATION = SearchRange(0.8, 0.98, complement=True)
SCHEDULEFREE_ADAMW = register(OptimizerSpec(
    name="schedulefree_adamw", family="adaptive",
    when_to_use="Schedule-free AdamW: no lr schedule and no training horizon (constant lr after "
                "its own warm-up; stop any time). Call optimizer.eval() before evaluating or "
                "saving the model, optimizer.train() before training again.",
    build=_schedulefree_adamw_builder,
    defaults={"lr": 0.0025, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
              "warmup_steps": 0},
    search_space={"lr": SearchRange(1e-4, 1e-1), "beta1": _SCHEDULE_FREE_INTERPOLATION,
                  "beta2": _BETA2, "eps": _ADAM_EPS, "weight_decay": _ADAM_WD},
    state_bytes_per_param=8, references=(_SCHEDULE_FREE, _ALGOPERF),
    tuning_order=_ADAM_ORDER, schedule_free=True,
))
SCHEDULEFREE_SGD = register(OptimizerSpec(
    name="schedulefree_sgd", family="sgd",
    when_to_use="Schedule-free SGD: SGD with momentum's memory, no lr schedule and no training "
                "horizon; lrs 10-50x a scheduled SGD's. optimizer.eval() before evaluating, "
                "optimizer.train() before training again.",
    build=_schedulefree_sgd_builder,
    defaults={"lr": 1.0, "momentum": 0.9, "weight_decay": 0.0, "warmup_steps": 0},
    search_space={"lr": SearchRange(0.1, 10.0), "momentum": _SCHEDULE_FREE_INTERPOLATION,
                  "weight_decay": _SGD_WD},
    state_bytes_per_param=4, references=(_SCHEDULE_FREE, _ALGOPERF),
    tuning_order=("lr", "momentum", "weight_decay"), schedule_free=True,
))

if hasattr(torch.optim, "Muon"):
    from optimizers.muon import MuonAdamW

    def _muon_builder(params: ParamsT, hp: dict[str, float]) -> torch.optim.Optimizer:
        return MuonAdamW(params, lr=hp["lr"], momentum=hp["momentum"],
                         weight_decay=hp["weight_decay"], aux_lr=hp["aux_lr"])

    MUON = register(OptimizerSpec(
        name="muon", family="orthogonal",
        when_to_use="Muon: orthogonalised momentum for hidden weight matrices (other tensors take "
                    "AdamW); fast Transformer pretraining.",
        build=_muon_builder,
        defaults={"lr": 0.02, "momentum": 0.95, "weight_decay": 0.01, "aux_lr": 3e-4},
        search_space={"lr": SearchRange(2e-3, 0.1), "weight_decay": SearchRange(1e-3, 0.1),
                      "aux_lr": SearchRange(1e-4, 1e-2),
                      "momentum": SearchRange(0.8, 0.98, complement=True)},
        state_bytes_per_param=4,
        references=("Jordan et al. 2024, Muon: An optimizer for hidden layers in neural networks",),
        tuning_order=("lr", "aux_lr", "weight_decay", "momentum"),
    ))
