"""The examples in the core modules' docstrings run and print what they show."""

from __future__ import annotations

import doctest

import pytest

from physops import _cg, _linop, _mri


@pytest.mark.parametrize("module", [_linop, _mri, _cg], ids=lambda m: m.__name__)
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
