"""The published-evidence table: every row validates, the coverage holds, bad tables are refused."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import get_args

import pytest

import optimizers
from tuner.evidence import (
    PublishedEvidenceError,
    PublishedTraining,
    Warmup,
    parse_published_trainings,
    published_trainings,
)
from tuner.evidence.published import COLUMNS, Domain, Kind
from tuner.task import ModelFamily, TaskDescription, TaskType

ROWS = published_trainings()
MIN_ROWS = 80
# Kinds of training that have a published practice: each needs at least this many rows.
MIN_ROWS_PER_KIND = 3
KINDS_WITHOUT_MINIMUM = {"other"}
# "other" is the task description's catch-all family: no published training needs it.
FAMILIES_NOT_REQUIRED = {"other"}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row_is_a_valid_task_description(row: PublishedTraining) -> None:
    task = TaskDescription.model_validate(row.task_fields())
    assert task.num_parameters == row.num_parameters
    assert task.fine_tuning == (row.fine_tuning is not None)
    assert set(row.task_fields()) <= set(TaskDescription.model_fields)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row_has_what_evidence_needs(row: PublishedTraining) -> None:
    assert row.optimizer in optimizers.names()
    assert row.citation and row.where and row.model
    assert 0 < row.lr <= 100
    assert row.num_parameters >= 1
    for beta in (row.beta1, row.beta2, row.momentum):
        assert beta is None or 0 <= beta < 1
    assert row.eps is None or 0 < row.eps <= 1
    assert row.weight_decay is None or row.weight_decay >= 0
    assert row.final_lr_fraction is None or 0 <= row.final_lr_fraction <= 1
    if row.fine_tuning == "parameter_efficient":
        assert row.frozen_parameters is not None
        assert row.frozen_parameters > row.num_parameters


def test_ids_are_unique() -> None:
    counts = Counter(row.id for row in ROWS)
    assert [row_id for row_id, n in counts.items() if n > 1] == []


def test_coverage_of_domains_kinds_families_and_task_types() -> None:
    assert len(ROWS) >= MIN_ROWS
    assert {row.domain for row in ROWS} == set(get_args(Domain))
    families = set(get_args(ModelFamily)) - FAMILIES_NOT_REQUIRED
    assert families <= {row.model_family for row in ROWS}
    assert {row.task_type for row in ROWS} == set(get_args(TaskType))
    per_kind = Counter(row.kind for row in ROWS)
    thin = {
        kind: per_kind[kind] for kind in get_args(Kind)
        if kind not in KINDS_WITHOUT_MINIMUM and per_kind[kind] < MIN_ROWS_PER_KIND
    }
    assert thin == {}


def test_task_fields_leave_out_what_the_paper_does_not_say() -> None:
    row = next(r for r in ROWS if r.num_devices is None and r.precision is None)
    fields = row.task_fields()
    assert "num_devices" not in fields and "precision" not in fields
    assert TaskDescription.model_validate(fields).num_devices == 1  # the task description's default
    peft = next(r for r in ROWS if r.fine_tuning == "parameter_efficient")
    assert peft.task_fields()["fine_tuning"] is True
    assert "frozen_parameters" not in peft.task_fields()


def test_loaded_once_per_process() -> None:
    assert published_trainings() is ROWS


# -- the parser, on tables written to a temporary file ---------------------------------------

GOOD_ROW = {
    "id": "toy-resnet", "model": "Toy ResNet", "domain": "vision", "kind": "cnn_supervised",
    "model_family": "cnn", "task_type": "classification", "num_parameters": "25557032",
    "frozen_parameters": "", "num_layers": "50", "dataset_size": "1281167", "batch_size": "256",
    "sparse_features": "false", "fine_tuning": "", "num_devices": "8", "precision": "fp32",
    "optimizer": "sgd_momentum", "lr": "0.1", "beta1": "", "beta2": "", "momentum": "0.9",
    "eps": "", "weight_decay": "1e-4", "weight_decay_kind": "l2", "schedule": "step",
    "warmup": "5 epochs", "final_lr_fraction": "", "citation": "Someone 2016, A paper",
    "where": "Sec. 3.4", "notes": "a note, with a comma",
}
PEFT_ROW = {
    **GOOD_ROW, "id": "toy-lora", "domain": "language", "kind": "fine_tuning_peft",
    "model_family": "transformer", "num_parameters": "300000", "frozen_parameters": "125000000",
    "fine_tuning": "parameter_efficient", "optimizer": "adamw", "lr": "5e-4", "momentum": "",
    "beta1": "0.9", "beta2": "0.999", "weight_decay": "0.01", "weight_decay_kind": "decoupled",
    "warmup": "6 percent",
}


def write_table(tmp_path: Path, rows: list[dict[str, str]],
                columns: tuple[str, ...] = COLUMNS) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path = tmp_path / "table.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def parse_file(path: Path) -> tuple[PublishedTraining, ...]:
    return parse_published_trainings(path.read_text(encoding="utf-8"), source=path.name)


def test_parser_reads_every_typed_field(tmp_path: Path) -> None:
    resnet, lora = parse_file(write_table(tmp_path, [GOOD_ROW, PEFT_ROW]))
    assert resnet.num_parameters == 25557032 and resnet.batch_size == 256
    assert resnet.lr == 0.1 and resnet.momentum == 0.9 and resnet.beta1 is None
    assert resnet.sparse_features is False and resnet.fine_tuning is None
    assert resnet.warmup == Warmup(5, "epochs") and str(resnet.warmup) == "5 epochs"
    assert resnet.notes == "a note, with a comma"
    assert lora.frozen_parameters == 125000000 and lora.warmup == Warmup(6, "percent")
    assert lora.task_fields()["fine_tuning"] is True


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("10k steps", Warmup(10_000, "steps")), ("375M tokens", Warmup(375e6, "tokens")),
     ("0.2 percent", Warmup(0.2, "percent")), ("5 epochs", Warmup(5, "epochs"))],
)
def test_warmup_is_parsed_with_its_unit(tmp_path: Path, cell: str, expected: Warmup) -> None:
    (row,) = parse_file(write_table(tmp_path, [{**GOOD_ROW, "warmup": cell}]))
    assert row.warmup == expected
    assert parse_file(write_table(tmp_path, [{**GOOD_ROW, "warmup": str(expected)}]))[0].warmup \
        == expected


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("domain", "astronomy", "is not one of"),
        ("kind", "cnn", "is not one of"),
        ("optimizer", "lars", "is not a registered optimizer"),
        ("citation", "", "required"),
        ("where", "  ", "required"),
        ("lr", "", "required"),
        ("lr", "0", "outside"),
        ("lr", "fast", "not a number"),
        ("lr", "nan", "outside"),
        ("num_parameters", "", "required"),
        ("num_parameters", "25.5e6", "whole number"),
        ("batch_size", "0", "outside"),
        ("momentum", "1.0", "outside"),
        ("weight_decay", "-1e-4", "outside"),
        ("sparse_features", "yes", "true or false"),
        ("warmup", "a while", "<number>"),
        ("warmup", "5 fortnights", "<number>"),
        ("warmup", "150 percent", "percent"),
        ("final_lr_fraction", "1.5", "outside"),
        ("beta1", "0.9", "sgd_momentum has no beta1"),
        ("frozen_parameters", "1000", "only parameter_efficient"),
        ("id", "Toy ResNet", "not a slug"),
    ],
)
def test_bad_cell_is_named_by_row_and_column(
    tmp_path: Path, column: str, value: str, problem: str,
) -> None:
    path = write_table(tmp_path, [PEFT_ROW, {**GOOD_ROW, column: value}])
    with pytest.raises(PublishedEvidenceError) as error:
        parse_file(path)
    message = str(error.value)
    assert "table.csv, line 3" in message
    assert f"column {column!r}" in message
    assert problem in message
    assert error.value.column == column and error.value.line == 3
    if column != "id":
        assert "row 'toy-resnet'" in message and error.value.row_id == "toy-resnet"


@pytest.mark.parametrize(
    ("changes", "column", "problem"),
    [
        ({"optimizer": "adam", "weight_decay_kind": "decoupled"}, "optimizer", "is adamw"),
        ({"weight_decay_kind": "l2"}, "weight_decay_kind", "L2 means adam"),
        ({"fine_tuning": "full"}, "fine_tuning", "needs parameter_efficient"),
        ({"frozen_parameters": ""}, "frozen_parameters", "required for parameter_efficient"),
        ({"weight_decay": "0"}, "weight_decay_kind", "weight decay of 0"),
    ],
)
def test_inconsistent_columns_are_refused(
    tmp_path: Path, changes: dict[str, str], column: str, problem: str,
) -> None:
    with pytest.raises(PublishedEvidenceError, match=problem) as error:
        parse_file(write_table(tmp_path, [GOOD_ROW, {**PEFT_ROW, **changes}]))
    assert (error.value.row_id, error.value.column) == ("toy-lora", column)


def test_duplicate_id_names_the_first_line(tmp_path: Path) -> None:
    with pytest.raises(PublishedEvidenceError, match=r"duplicate id \(first on line 2\)") as error:
        parse_file(write_table(tmp_path, [GOOD_ROW, PEFT_ROW, GOOD_ROW]))
    assert (error.value.line, error.value.row_id, error.value.column) == (4, "toy-resnet", "id")


def test_header_must_list_every_column_in_order(tmp_path: Path) -> None:
    without_notes = COLUMNS[:-1]
    missing = r"line 1: header: missing columns \['notes'\]"
    with pytest.raises(PublishedEvidenceError, match=missing):
        parse_file(write_table(tmp_path, [GOOD_ROW], columns=without_notes))
    swapped = (COLUMNS[1], COLUMNS[0], *COLUMNS[2:])
    with pytest.raises(PublishedEvidenceError, match="in the order"):
        parse_file(write_table(tmp_path, [GOOD_ROW], columns=swapped))


def test_short_row_and_empty_table_are_refused(tmp_path: Path) -> None:
    path = write_table(tmp_path, [GOOD_ROW])
    path.write_text(path.read_text(encoding="utf-8") + "short-row,Short\n", encoding="utf-8")
    with pytest.raises(PublishedEvidenceError, match=r"line 3, row 'short-row': expected 29"):
        parse_file(path)
    with pytest.raises(PublishedEvidenceError, match="empty"):
        parse_published_trainings("")
