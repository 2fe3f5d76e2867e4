"""The examples in the package's docstrings run, as doctests, with the rest of the suite."""

import doctest

import pytest

import entropymix
from entropymix import _validation, functional, loss, mix, tap


@pytest.mark.parametrize("module", [functional, mix, loss, tap, _validation], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             extraglobs={"torch": __import__("torch")})
    assert result.attempted > 0, f"{module.__name__} has no docstring example"
    assert result.failed == 0


def test_every_public_name_has_a_docstring_and_the_classes_show_an_example():
    for name in entropymix.__all__:
        obj = getattr(entropymix, name)
        if name in ("functional", "__version__"):
            continue
        assert obj.__doc__, name
    for cls in (entropymix.EntropyMix, entropymix.CutMix, entropymix.ClassMix, entropymix.SPEEDLoss,
                entropymix.FeatureTap):
        assert ">>>" in cls.__doc__, cls.__name__
