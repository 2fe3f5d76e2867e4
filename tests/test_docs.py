"""The examples in the package's docstrings run, as doctests, with the rest of the suite."""

import doctest
import inspect

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


def test_help_shows_the_call_and_forward_of_every_module():
    """``help(SPEEDLoss.forward)``, ``help(mixer)`` and friends show our signatures and words, not
    torch's generic ``nn.Module`` text."""
    from entropymix import ClassMix, CutMix, EntropyMix, SPEEDLoss
    for cls in (EntropyMix, CutMix, ClassMix, SPEEDLoss):
        for name in ("__call__", "forward"):
            method = getattr(cls, name)
            doc = inspect.getdoc(method) or ""
            assert doc and "Define the computation" not in doc and ("Returns" in doc or ":meth:`forward`" in doc), (cls.__name__, name)
            params = inspect.signature(method).parameters
            assert ("views" in params) if cls is not SPEEDLoss else ("student_logits" in params), (cls.__name__, name)
