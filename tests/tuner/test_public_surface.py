"""``tuner``'s public surface: every name in ``tuner.__all__`` resolves to the object of the
module that defines it, and importing the package or its task module pulls in neither torch nor
Optuna (the Python client and the CLI's first lines depend on that)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import tuner


@pytest.mark.parametrize("name", tuner.__all__)
def test_every_public_name_is_the_defining_modules_object(name: str) -> None:
    value = getattr(tuner, name)
    module = importlib.import_module(tuner._WHERE[name])
    assert value is getattr(module, name)
    assert name in dir(tuner)


def test_all_lists_every_resolvable_name() -> None:
    assert sorted(tuner.__all__) == sorted(tuner._WHERE)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'recomend'"):
        _ = tuner.recomend


def test_importing_the_package_and_the_task_is_light() -> None:
    code = ("import sys, tuner, tuner.task; "
            "print(sorted(m for m in ('torch', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
