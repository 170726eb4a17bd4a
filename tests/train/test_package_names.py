"""`llavakit.train` loads its names on first use (so the CLI's parser needs no torch); each must still be the
object its submodule defines, also after that submodule was imported on its own."""

from __future__ import annotations

import importlib
import types

import pytest

import llavakit.train as package


@pytest.mark.parametrize("name", package.__all__)
def test_each_public_name_is_its_submodules_object(name: str):
    module = importlib.import_module(f"llavakit.train.{package._WHERE[name]}")
    got = getattr(package, name)
    assert got is getattr(module, name) and not isinstance(got, types.ModuleType)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        package.nothing  # noqa: B018
