"""The prior: the user's rules on canonical tasks, invariants over random tasks, latency."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import optimizers
from optimizers.registry import HYPERPARAMETER_BOUNDS
from tuner.evidence.records import EvidenceRecord
from tuner.prior import Candidate, Recommendation, recommend
from tuner.rules import (
    ADAM_BATCH_FACTOR_MAX,
    BASE_WEIGHTS,
    GPT3_LR_EXPONENT,
    GPT3_LR_TABLE,
    MEMORY_PENALTY,
    RULES,
    SGD_BATCH_FACTOR_MAX,
    SMALL_MODEL_LR_MAX_FACTOR,
    SMALL_MODEL_LR_PARAMETERS,
    Derive,
    gpt3_lr,
)
from tuner.task import MAX_PARAMETERS, PEFT_TRAINABLE_MAX, TaskDescription

ALL = len(optimizers.names())
CONTRACT_NAMES = {
    "sgd", "sgd_momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw", "nadam", "radam",
    "adafactor", "lamb", "lion", "muon", "schedulefree_adamw", "schedulefree_sgd",
}
ADAM_FAMILY = ("adam", "adamw", "nadam", "radam", "lamb")
MEMORY_LIGHT = {"adafactor", "lion", "sgd_momentum"}


def task(**fields: Any) -> TaskDescription:
    return TaskDescription.model_validate(fields)


def top(t: TaskDescription, k: int = 3) -> list[str]:
    """The rules' ranking (no evidence: these tests pin the rules themselves)."""
    return [c.optimizer for c in recommend(t, top_k=k, evidence=()).candidates]


def by_name(t: TaskDescription) -> dict[str, Candidate]:
    return {c.optimizer: c for c in recommend(t, top_k=ALL, evidence=()).candidates}


def lr(c: Candidate) -> float:
    return c.hyperparameters["lr"].default


# ------------------------------------------------------------------------------------------
# The user's rules on canonical tasks
# ------------------------------------------------------------------------------------------

CANONICAL: list[tuple[str, dict[str, Any], str]] = [
    ("small mlp", {"model_family": "mlp", "num_parameters": 50_000, "dataset_size": 10_000},
     "sgd_momentum"),
    ("small linear", {"model_family": "linear", "num_parameters": 500_000,
                      "dataset_size": 50_000}, "sgd_momentum"),
    ("general mlp", {"model_family": "mlp", "num_parameters": 5_000_000}, "adam"),
    # Convolutional networks trained on labels take SGD momentum at any depth (Goyal et al.
    # 2017; He et al. 2016): the published record, not Adam's general default.
    ("cnn classifier", {"model_family": "cnn", "num_parameters": 11_700_000, "num_layers": 18,
                        "dataset_size": 1_281_167, "batch_size": 256}, "sgd_momentum"),
    ("general other", {"model_family": "other", "num_parameters": 5_000_000}, "adam"),
    ("125M transformer", {"model_family": "transformer", "task_type": "language_modeling",
                          "num_parameters": 125_000_000, "num_layers": 12, "batch_size": 512},
     "adamw"),
    ("60-layer net", {"model_family": "other", "num_parameters": 20_000_000, "num_layers": 60},
     "adamw"),
    ("60-layer cnn", {"model_family": "cnn", "num_parameters": 20_000_000, "num_layers": 60},
     "sgd_momentum"),
    ("lstm", {"model_family": "rnn", "num_parameters": 20_000_000, "num_layers": 2}, "rmsprop"),
    ("10B, large budget", {"model_family": "transformer", "num_parameters": 10_000_000_000,
                           "memory_budget_gb": 1000, "precision": "bf16"}, "lamb"),
    ("sparse linear", {"model_family": "linear", "num_parameters": 10_000_000,
                       "sparse_features": True}, "adagrad"),
    ("sparse small", {"model_family": "linear", "num_parameters": 50_000,
                      "sparse_features": True}, "adagrad"),
    ("fine-tuning bert", {"model_family": "transformer", "num_parameters": 110_000_000,
                          "fine_tuning": True, "batch_size": 32}, "adamw"),
    ("lora", {"model_family": "transformer", "num_parameters": 4_000_000,
              "frozen_parameters": 7_000_000_000, "fine_tuning": True}, "adamw"),
    ("rl policy", {"model_family": "mlp", "task_type": "reinforcement_learning",
                   "num_parameters": 10_000, "batch_size": 64}, "adam"),
    ("gan", {"model_family": "cnn", "task_type": "generation", "num_parameters": 6_000_000,
             "batch_size": 128}, "adam"),
    ("gcn", {"model_family": "gnn", "num_parameters": 20_000, "num_layers": 2}, "adam"),
]


@pytest.mark.parametrize("evidence", [None, ()], ids=["with evidence", "rules alone"])
@pytest.mark.parametrize(("fields", "expected"), [(f, e) for _, f, e in CANONICAL],
                         ids=[n for n, _, _ in CANONICAL])
def test_canonical_top1(fields: dict[str, Any], expected: str, evidence: tuple[()] | None) -> None:
    assert recommend(task(**fields), evidence=evidence).candidates[0].optimizer == expected


def test_small_problem_has_adam_as_safe_second() -> None:
    assert top(task(model_family="mlp", num_parameters=50_000, dataset_size=10_000))[:2] == [
        "sgd_momentum", "adam"]


def test_small_and_general_thresholds_are_both_reachable() -> None:
    assert top(task(model_family="other", num_parameters=99_999))[0] == "sgd_momentum"
    assert top(task(model_family="other", num_parameters=100_000))[0] == "adam"
    assert top(task(model_family="mlp", num_parameters=999_999, dataset_size=100_000))[0] == (
        "sgd_momentum")
    assert top(task(model_family="mlp", num_parameters=999_999, dataset_size=100_001))[0] == (
        "adam")


def test_massive_model_with_small_budget_goes_memory_light() -> None:
    t = task(model_family="transformer", num_parameters=10_000_000_000, memory_budget_gb=48,
             precision="bf16")
    assert top(t)[0] in MEMORY_LIGHT
    cands = by_name(t)
    for name in ADAM_FAMILY:
        mem = cands[name].memory
        assert mem.fits is False
        assert mem.state_bytes == 8 * 10_000_000_000
        assert mem.total_bytes == (2 + 2 + 8) * 10_000_000_000
        line = next(r for r in cands[name].rationale if r.startswith("does not fit"))
        assert "exceeds the 48 GB budget by 72 GB" in line
        assert f"x{MEMORY_PENALTY:g}" in line
        assert "nothing sharded" in line
    assert cands[top(t)[0]].memory.fits is True
    assert any("nothing sharded" in r for r in cands[top(t)[0]].rationale)


def test_memory_accounting_and_fits_without_budget() -> None:
    c = by_name(task(model_family="mlp", num_parameters=1_000_000))
    assert c["adam"].memory.model_dump() == {"state_bytes": 8_000_000,
                                             "total_bytes": 16_000_000, "fits": None}
    assert c["sgd"].memory.state_bytes == 0
    assert c["lion"].memory.state_bytes == 4_000_000
    fits = by_name(task(model_family="mlp", num_parameters=1_000_000, memory_budget_gb=1.0))
    assert all(cand.memory.fits is True for cand in fits.values())


def test_fine_tuning_uses_a_small_adamw_lr() -> None:
    adamw = by_name(task(model_family="transformer", num_parameters=110_000_000,
                         fine_tuning=True, batch_size=32))["adamw"]
    prior = adamw.hyperparameters["lr"]
    assert prior.high <= 1e-4
    assert 1e-5 <= prior.default <= 5e-5
    assert any("fine-tuning" in r for r in adamw.rationale)


def test_large_batch_brings_lamb_or_lion_into_top2_and_keeps_adam_family() -> None:
    t = task(model_family="transformer", num_parameters=340_000_000, batch_size=32768)
    ranked = top(t)
    assert {"lamb", "lion"} & set(ranked[:2])
    assert {"adam", "adamw", "nadam"} & set(ranked)


def test_lion_lr_below_and_weight_decay_above_adamw() -> None:
    for t in (task(model_family="transformer", num_parameters=125_000_000),
              task(model_family="mlp", num_parameters=5_000_000, batch_size=4096),
              task(model_family="transformer", num_parameters=110_000_000, fine_tuning=True)):
        c = by_name(t)
        assert lr(c["lion"]) < lr(c["adamw"])
        assert math.isclose(lr(c["lion"]), lr(c["adamw"]) / 5)
        wd_lion = c["lion"].hyperparameters["weight_decay"].default
        assert wd_lion > c["adamw"].hyperparameters["weight_decay"].default
        assert any(r.startswith("Lion from AdamW") for r in c["lion"].rationale)


def test_lr_falls_with_model_size() -> None:
    small = by_name(task(model_family="transformer", num_parameters=125_000_000))
    large = by_name(task(model_family="transformer", num_parameters=1_300_000_000))
    assert lr(large["adamw"]) < lr(small["adamw"])
    assert math.isclose(lr(small["adamw"]), 6e-4)
    assert math.isclose(lr(large["adamw"]), 2e-4)


def test_gpt3_table_interpolation() -> None:
    for size, value in GPT3_LR_TABLE:
        assert math.isclose(gpt3_lr(int(size)), value)
    sizes = [10**e for e in range(6, 13)]
    values = [gpt3_lr(s) for s in sizes]
    assert values == sorted(values, reverse=True)
    assert gpt3_lr(10**15) == GPT3_LR_TABLE[-1][1]
    assert 3e-4 > gpt3_lr(500_000_000) > 2.5e-4


def test_batch_scaling_sqrt_for_adam_linear_for_sgd() -> None:
    ref = by_name(task(model_family="mlp", num_parameters=5_000_000, batch_size=256))
    big = by_name(task(model_family="mlp", num_parameters=5_000_000, batch_size=1024))
    assert math.isclose(lr(big["adam"]) / lr(ref["adam"]), 2.0)
    assert math.isclose(lr(big["lamb"]) / lr(ref["lamb"]), 2.0)
    assert math.isclose(lr(big["sgd_momentum"]) / lr(ref["sgd_momentum"]), 4.0)
    clamped = by_name(task(model_family="mlp", num_parameters=5_000_000, batch_size=10**9))
    assert math.isclose(lr(clamped["sgd_momentum"]) / lr(ref["sgd_momentum"]),
                        SGD_BATCH_FACTOR_MAX)
    # below the reference batch the lr stays (measured: bench/lr_sweep.py)
    small = by_name(task(model_family="mlp", num_parameters=5_000_000, batch_size=32))
    for name in ("adam", "lamb", "sgd_momentum"):
        assert lr(small[name]) == lr(ref[name])
        assert not any(r.startswith("batch ") for r in small[name].rationale)


def test_small_models_raise_every_adaptive_lr_but_not_sgd() -> None:
    big = by_name(task(model_family="cnn", num_parameters=50_000_000, batch_size=256))
    small = by_name(task(model_family="cnn", num_parameters=10_000, batch_size=256))
    factor = (SMALL_MODEL_LR_PARAMETERS / 10_000) ** GPT3_LR_EXPONENT
    for name in ("adam", "adamw", "nadam", "radam", "lamb", "rmsprop", "adagrad"):
        assert math.isclose(lr(small[name]) / lr(big[name]), factor), name
    for name in ("sgd", "sgd_momentum", "nesterov", "adafactor"):
        assert lr(small[name]) == lr(big[name]), name


def test_rationale_names_each_rule_that_changed_something() -> None:
    c = by_name(task(model_family="transformer", num_parameters=125_000_000, batch_size=512))
    adamw = c["adamw"].rationale
    assert adamw[0] == optimizers.get("adamw").when_to_use
    assert any(r.startswith("transformer family") and "score x4" in r for r in adamw)
    assert any("GPT-3" in r and "lr 0.001 -> 0.0006" in r for r in adamw)
    assert any(r.startswith("batch 512") and "(x1.41)" in r for r in adamw)
    assert any("GPT-3" in ref for ref in c["adamw"].references)
    # a rule that changes nothing for an optimizer says nothing there
    assert not any("GPT-3" in r for r in c["sgd_momentum"].rationale)


def test_zero_default_on_log_scale_starts_at_range_low() -> None:
    adam = by_name(task(model_family="mlp", num_parameters=5_000_000))["adam"]
    wd = adam.hyperparameters["weight_decay"]
    assert wd.default == wd.low == 1e-6
    assert "off the log scale" in adam.rationale[0]


def test_json_shape_matches_contract() -> None:
    rec = recommend(task(model_family="transformer", num_parameters=124_000_000,
                         memory_budget_gb=24, precision="bf16"))
    data = json.loads(json.dumps(rec.model_dump(mode="json"), allow_nan=False))
    assert set(data) == {"task", "candidates"}
    assert data["task"]["num_parameters"] == 124_000_000
    cand = data["candidates"][0]
    assert set(cand) == {"optimizer", "score", "hyperparameters", "memory", "rationale",
                         "references", "evidence", "schedule"}
    assert set(cand["hyperparameters"]["lr"]) == {"default", "low", "high", "log", "complement"}
    assert set(cand["memory"]) == {"state_bytes", "total_bytes", "fits"}
    assert set(cand["schedule"]) == {"name", "warmup_steps", "warmup_fraction",
                                     "final_lr_fraction", "decay_fraction", "decay_shape"}
    assert Recommendation.model_validate(data) == rec


@pytest.mark.parametrize("top_k", [0, -1, ALL + 1, True])
def test_top_k_bounds(top_k: int) -> None:
    with pytest.raises(ValueError, match="top_k"):
        recommend(task(model_family="mlp", num_parameters=10), top_k=top_k)


def test_all_candidates_scores_sum_to_one() -> None:
    rec = recommend(task(model_family="gnn", num_parameters=3_000_000), top_k=ALL)
    assert [c.optimizer for c in rec.candidates] == sorted(optimizers.names(), key=lambda n: (
        -next(c.score for c in rec.candidates if c.optimizer == n), n))
    assert math.isclose(math.fsum(c.score for c in rec.candidates), 1.0)
    assert {c.optimizer for c in rec.candidates} == set(optimizers.names())


def test_rules_table_is_well_formed() -> None:
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    assert set(BASE_WEIGHTS) <= CONTRACT_NAMES
    assert all(w > 0 for w in BASE_WEIGHTS.values())
    for rule in RULES:
        assert rule.rationale
        assert rule.reference
        assert set(rule.weights) <= CONTRACT_NAMES | {"*"}, rule.name
        assert all(w > 0 and math.isfinite(w) for w in rule.weights.values()), rule.name
        for adj in rule.adjust:
            assert adj.optimizers <= CONTRACT_NAMES, rule.name
            if isinstance(adj, Derive):
                assert adj.source in CONTRACT_NAMES
                assert 0 < adj.low <= adj.default <= adj.high


# ------------------------------------------------------------------------------------------
# TaskDescription validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"model_family": "mlp", "num_parameters": 10, "optimizer": "adam"},
    {"model_family": "mlp", "num_parameters": 0},
    {"model_family": "mlp", "num_parameters": 10, "memory_budget_gb": float("nan")},
    {"model_family": "mlp", "num_parameters": 10, "memory_budget_gb": float("inf")},
    {"model_family": "mlp", "num_parameters": 10, "memory_budget_gb": 0},
    {"model_family": "lstm", "num_parameters": 10},
    {"num_parameters": 10},
    {"model_family": "mlp", "num_parameters": 10, "fine_tuning": "lora"},
    {"model_family": "mlp", "num_parameters": 10, "fine_tuning": 1},
    {"model_family": "mlp", "num_parameters": 10, "fine_tuning": "true"},
    {"model_family": "mlp", "num_parameters": 10, "fine_tuning": True, "frozen_parameters": -1},
])
def test_task_validation_rejects(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TaskDescription.model_validate(fields)


def test_task_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as bad_kind:
        task(model_family="mlp", num_parameters=10, fine_tuning="lora")
    assert [e["loc"] for e in bad_kind.value.errors()] == [("fine_tuning",)]
    with pytest.raises(ValidationError) as frozen:
        task(model_family="mlp", num_parameters=10, fine_tuning=True, frozen_parameters=-1)
    assert [e["loc"] for e in frozen.value.errors()] == [("frozen_parameters",)]


def test_frozen_parameters_without_fine_tuning_only_take_memory() -> None:
    # A frozen part trained around from scratch (e.g. fixed embeddings): it is held in memory,
    # but no fine-tuning kind is read from it (the schema states no rule across the two fields).
    frozen = task(model_family="mlp", num_parameters=10, frozen_parameters=100)
    assert frozen.fine_tuning_kind is None
    assert frozen.total_parameters == 110


@pytest.mark.parametrize(("family", "trainable", "fine_tuning", "frozen", "kind"), [
    ("transformer", 4_000_000, False, None, None),
    ("transformer", 110_000_000, True, None, "full"),
    ("transformer", 4_000_000, "full", None, "full"),
    ("transformer", 4_000_000, True, 7_000_000_000, "parameter_efficient"),
    ("transformer", 4_000_000, True, 1_000, "full"),
    ("transformer", 4_000_000, "parameter_efficient", None, "parameter_efficient"),
    ("transformer", 4_000_000, "full", 7_000_000_000, "full"),  # said explicitly: it wins
    # a Transformer fine-tuned with few trainable parameters reads as LoRA/adapters...
    ("transformer", PEFT_TRAINABLE_MAX - 1, True, None, "parameter_efficient"),
    ("transformer", PEFT_TRAINABLE_MAX, True, None, "full"),
    # ... but a small CNN is fully fine-tuned often (MobileNet: 3.4M parameters)
    ("cnn", 3_400_000, True, None, "full"),
])
def test_fine_tuning_kind(family: str, trainable: int, fine_tuning: bool | str,
                          frozen: int | None, kind: str | None) -> None:
    t = task(model_family=family, num_parameters=trainable, fine_tuning=fine_tuning,
             frozen_parameters=frozen)
    assert t.fine_tuning_kind == kind
    assert t.fine_tuning == fine_tuning  # echoed as given


def test_parameter_efficient_fine_tuning_has_its_own_lr_band() -> None:
    full = by_name(task(model_family="transformer", num_parameters=110_000_000,
                        fine_tuning="full"))["adamw"].hyperparameters["lr"]
    lora = by_name(task(model_family="transformer", num_parameters=4_000_000,
                        frozen_parameters=7_000_000_000, fine_tuning=True))
    peft = lora["adamw"].hyperparameters["lr"]
    assert 1e-4 <= peft.default <= 1e-3 and peft.low <= 1e-4 and peft.high >= 1e-3
    assert peft.default >= 5 * full.default
    assert any(r.startswith("parameter-efficient fine-tuning") for r in lora["adamw"].rationale)


@pytest.mark.parametrize(("fields", "optimizer", "lr_default"), [
    # policy networks: Adam at 3e-4 however small (no small-model rise) or large the batch
    ({"model_family": "mlp", "task_type": "reinforcement_learning", "num_parameters": 10_000,
      "batch_size": 4096}, "adam", 3e-4),
    # GANs and diffusion: Adam at 2e-4, not the small-model or batch-scaled lr
    ({"model_family": "cnn", "task_type": "generation", "num_parameters": 6_000_000,
      "batch_size": 2048}, "adam", 2e-4),
    ({"model_family": "gnn", "num_parameters": 20_000}, "adam", 1e-2),
    # residual CNN at batch 1024: 0.1 x 1024/256 (Goyal et al. 2017)
    ({"model_family": "cnn", "num_parameters": 25_000_000, "num_layers": 50,
      "batch_size": 1024}, "sgd_momentum", 0.4),
    # the held-out 5.5k-parameter LSTM: RMSProp keeps its registry lr (no small-model rise)
    ({"model_family": "rnn", "num_parameters": 5_500, "num_layers": 1, "batch_size": 64},
     "rmsprop", 1e-3),
])
def test_kinds_of_training_get_their_published_lr(
    fields: dict[str, Any], optimizer: str, lr_default: float
) -> None:
    t = task(**fields)
    assert top(t)[0] == optimizer
    assert math.isclose(lr(by_name(t)[optimizer]), lr_default)


def test_gan_beta1_is_low() -> None:
    adam = by_name(task(model_family="cnn", task_type="generation",
                        num_parameters=6_000_000))["adam"].hyperparameters["beta1"]
    assert adam.default == 0.5 and adam.high >= 0.9


def test_adam_batch_factor_is_capped_and_does_not_stack_past_the_small_model_cap() -> None:
    ref = by_name(task(model_family="mlp", num_parameters=30_000_000, batch_size=256))
    huge = by_name(task(model_family="mlp", num_parameters=30_000_000, batch_size=32768))
    assert math.isclose(lr(huge["adam"]) / lr(ref["adam"]), ADAM_BATCH_FACTOR_MAX)
    tiny = by_name(task(model_family="mlp", num_parameters=100, dataset_size=10**6,
                        batch_size=32768))
    base = optimizers.get("adam").defaults["lr"]
    assert math.isclose(lr(tiny["adam"]) / base, SMALL_MODEL_LR_MAX_FACTOR)


# ------------------------------------------------------------------------------------------
# Memory: sharded over the devices, fitting candidates first
# ------------------------------------------------------------------------------------------


def test_70b_fine_tuned_on_8_devices_finds_fitting_optimizers() -> None:
    t = task(model_family="transformer", num_parameters=70_000_000_000, fine_tuning=True,
             num_devices=8, memory_budget_gb=80, precision="bf16")
    for evidence in (None, ()):
        cands = recommend(t, top_k=ALL, evidence=evidence).candidates
        fits = [c.memory.fits is True for c in cands]
        assert fits[0] and cands[0].optimizer != "adamw"
        assert fits == sorted(fits, reverse=True)
        scores = [c.score for c in cands]
        assert scores == sorted(scores, reverse=True)
        adamw = next(c for c in cands if c.optimizer == "adamw")
        # (2 + 2 + 8) bytes x 70e9 over 8 devices: 105 GB per device
        assert adamw.memory.total_bytes == 12 * 70_000_000_000 // 8
        assert adamw.memory.state_bytes == 8 * 70_000_000_000 // 8
        assert adamw.memory.fits is False
        assert any("sharded over 8 devices" in r for r in adamw.rationale)
        assert any("sharded over 8 devices" in r and "fits the 80 GB" in r
                   for r in cands[0].rationale)


def test_a_non_fitting_candidate_never_outranks_a_fitting_one_even_with_evidence() -> None:
    t = task(model_family="transformer", num_parameters=7_000_000_000, memory_budget_gb=40,
             precision="bf16")
    pool = [EvidenceRecord(source="job", record_id=f"j{i}", label="x", task=t, optimizer="adamw",
                           lr=1e-4, outcome="best", job_id=f"j{i}") for i in range(20)]
    cands = recommend(t, top_k=ALL, evidence=pool).candidates
    fits = [c.memory.fits is True for c in cands]
    assert fits == sorted(fits, reverse=True) and fits[0]
    adamw = next(c for c in cands if c.optimizer == "adamw")
    assert any(r.startswith("does not fit while others do") for r in adamw.rationale)


def test_frozen_parameters_take_memory_but_no_gradients_or_state() -> None:
    c = by_name(task(model_family="transformer", num_parameters=1_000_000, fine_tuning=True,
                     frozen_parameters=9_000_000, precision="bf16"))
    # weights of 10M at 2 bytes, gradients of 1M at 2 bytes, Adam state of 1M at 8 bytes
    assert c["adamw"].memory.total_bytes == 2 * 10_000_000 + 2 * 1_000_000 + 8 * 1_000_000
    assert c["adamw"].memory.state_bytes == 8 * 1_000_000


# ------------------------------------------------------------------------------------------
# Properties over random valid tasks
# ------------------------------------------------------------------------------------------


def _log_int(high: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(1, high),
        st.floats(0, math.log10(high)).map(lambda e: max(1, min(high, int(10**e)))),
    )


def _optional(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), s)


TASKS = st.builds(
    TaskDescription,
    model_family=st.sampled_from(["linear", "mlp", "cnn", "rnn", "transformer", "gnn", "other"]),
    task_type=st.sampled_from(["classification", "regression", "language_modeling",
                               "generation", "reinforcement_learning", "other"]),
    num_parameters=_log_int(MAX_PARAMETERS),
    num_layers=_optional(_log_int(100_000)),
    dataset_size=_optional(_log_int(10**13)),
    batch_size=_optional(_log_int(10**13)),
    sparse_features=st.booleans(),
    fine_tuning=st.sampled_from([False, True, "full", "parameter_efficient"]),
    num_devices=_log_int(1_000_000),
    memory_budget_gb=_optional(st.floats(1e-3, 1e6, allow_nan=False, allow_infinity=False)),
    precision=st.sampled_from(["fp32", "bf16", "fp16"]),
)

PROPERTY_SETTINGS = settings(max_examples=200, derandomize=True, database=None, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(t=TASKS, top_k=st.integers(1, ALL))
def test_recommendation_invariants(t: TaskDescription, top_k: int) -> None:
    rec = recommend(t, top_k=top_k)
    cands = rec.candidates
    assert len(cands) == top_k
    assert rec.task == t
    scores = [c.score for c in cands]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert math.fsum(scores) <= 1.0 + 1e-9
    keys = [(-c.score, c.optimizer) for c in cands]
    assert keys == sorted(keys)
    fits = [c.memory.fits is not False for c in cands]
    assert fits == sorted(fits, reverse=True)  # fitting candidates first
    assert len({c.optimizer for c in cands}) == top_k
    for c in cands:
        assert c.optimizer in optimizers.names()
        assert c.rationale
        assert all(c.rationale)
        assert c.references
        assert all(c.references)
        assert set(c.hyperparameters) == set(optimizers.get(c.optimizer).search_space)
        for hp, p in c.hyperparameters.items():
            values = (p.default, p.low, p.high)
            assert all(math.isfinite(v) for v in values), (c.optimizer, hp, p)
            assert p.low <= p.default <= p.high, (c.optimizer, hp, p)
            if p.log:
                assert p.low > 0
            if p.complement:
                assert p.high < 1
            for v in values:
                HYPERPARAMETER_BOUNDS[hp].check(hp, v)
        assert c.memory.state_bytes >= 0
        assert c.memory.total_bytes >= c.memory.state_bytes
        assert (c.memory.fits is None) == (t.memory_budget_gb is None)
    json.dumps(rec.model_dump(mode="json"), allow_nan=False)
    assert recommend(t, top_k=top_k).model_dump() == rec.model_dump()


@PROPERTY_SETTINGS
@given(t=TASKS)
def test_top_k_is_a_prefix_of_the_full_ranking(t: TaskDescription) -> None:
    full = recommend(t, top_k=ALL).model_dump()["candidates"]
    assert recommend(t, top_k=3).model_dump()["candidates"] == full[:3]


# ------------------------------------------------------------------------------------------
# Latency
# ------------------------------------------------------------------------------------------


def test_latency_1000_calls_well_under_a_second() -> None:
    families = ["linear", "mlp", "cnn", "rnn", "transformer", "gnn", "other"]
    tasks = [
        task(model_family=families[i % 7], num_parameters=10 ** (3 + i % 10),
             batch_size=(None, 32, 256, 32768)[i % 4],
             memory_budget_gb=(None, 16.0, 80.0)[i % 3], fine_tuning=i % 5 == 0,
             num_layers=(None, 4, 64)[i % 3], sparse_features=i % 11 == 0)
        for i in range(1000)
    ]
    recommend(tasks[0])  # warm the per-optimizer cache
    start = time.perf_counter()
    for t in tasks:
        recommend(t)
    elapsed = time.perf_counter() - start
    print(f"recommend(): {elapsed * 1e6 / len(tasks):.0f} us per call (top_k=3, 1000 tasks)")
    assert elapsed < 1.0
