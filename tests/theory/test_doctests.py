"""The ``>>>`` examples in the docstrings of ``theory/`` run as doctests, with a float tolerance.

Every module of the ``theory`` package is found by walking the package (a module added later, or
an example added to any docstring, is picked up without touching this file). A module with
examples must run at least one and fail none; a module without examples passes (it has nothing
to check yet). This is the ``--doctest-modules`` check for ``theory/`` only: pytest's ``addopts``
stay as they are, and ``sim/``, ``studies/`` and the rest are not collected as doctests.

Options: ``ELLIPSIS | NORMALIZE_WHITESPACE``. Outputs are compared as text first; where the text
differs, :class:`FloatTolerantChecker` compares them as numbers: the non-numeric text must agree
(whitespace ignored) and each number of the expected output must match the one printed in its
place to the digits it is written with (``0.3333`` matches ``0.33333333333333326``: half a unit
of its last digit, and at least a relative 1e-9 whatever the digits), so an example can state a
value at the precision its claim has and not break on the last bits of a float. Integers are
compared exactly (up to the same 1e-9). Examples still round their outputs (``round(x, 12)``,
``.tolist()``) so they also read correctly in ``help()``.
"""
from __future__ import annotations

import doctest
import importlib
import math
import pkgutil
import re
import types

import pytest

import theory

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
RTOL_FLOOR = 1e-9  # every number may differ by this much, relatively, from the written one

# a number not glued to a name (``float64``, ``x0`` stay text) and not part of a longer number
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def theory_modules() -> list[str]:
    """Every module of the ``theory`` package, the package itself included, sorted."""
    names = [theory.__name__]
    names += [m.name for m in pkgutil.walk_packages(theory.__path__, prefix=theory.__name__ + ".")]
    return sorted(names)


def _tolerance(text: str) -> float:
    """Half a unit of the last digit ``text`` is written with (0 for an integer)."""
    mantissa, _, exponent = text.lower().partition("e")
    if "." not in mantissa and not exponent:
        return 0.0
    decimals = len(mantissa.split(".", 1)[1]) if "." in mantissa else 0
    return 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def numbers_match(want: str, got: str) -> bool:
    """``got`` says what ``want`` says, numbers read to the digits ``want`` writes them with."""
    want_nums, got_nums = _NUMBER.findall(want), _NUMBER.findall(got)
    if len(want_nums) != len(got_nums) or not want_nums:
        return False
    skeleton = lambda s: "".join(_NUMBER.sub("#", s).split())  # noqa: E731
    if skeleton(want) != skeleton(got):
        return False
    for w, g in zip(want_nums, got_nums):
        wv, gv = float(w), float(g)
        if not abs(wv - gv) <= max(_tolerance(w), RTOL_FLOOR * abs(wv)):
            return False
    return True


class FloatTolerantChecker(doctest.OutputChecker):
    """doctest's checker, then :func:`numbers_match` where the text differs."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        if super().check_output(want, got, optionflags):
            return True
        return numbers_match(want, got)


def run_module_doctests(name: str, module=None) -> doctest.TestResults:
    """Run the docstring examples of module ``name`` as ``doctest.testmod`` does (each docstring
    in a copy of the module's globals), with :data:`OPTIONFLAGS` and the tolerant checker."""
    module = importlib.import_module(name) if module is None else module
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(checker=FloatTolerantChecker(), optionflags=OPTIONFLAGS)
    for test in finder.find(module, name):
        runner.run(test)
    return doctest.TestResults(runner.failures, runner.tries)


@pytest.mark.parametrize("name", theory_modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    n_examples = sum(len(t.examples) for t in doctest.DocTestFinder(exclude_empty=True).find(module, name))
    result = run_module_doctests(name)
    assert result.failed == 0, f"{result.failed} of the {result.attempted} docstring examples of {name} fail " \
                               f"(the report above shows which)"
    if n_examples:
        assert result.attempted >= 1, f"{name} has {n_examples} examples and none ran"


def test_walk_finds_the_modules_with_examples():
    """The walk reaches the theory modules whose docstrings carry examples today (a guard
    against a walk that silently finds nothing)."""
    names = theory_modules()
    for name in ("theory.random_features", "theory.tensor_attention", "theory.token_sample.uniform"):
        assert name in names
    for name in ("theory.random_features", "theory.tensor_attention"):
        assert run_module_doctests(name).attempted >= 10, name


def test_a_wrong_example_fails():
    """The runner reports a wrong output (beyond the written digits) as a failure."""
    module = types.ModuleType("doctest_probe")
    exec(compile('''
def third():
    """
    >>> 1 / 3
    0.3333
    >>> 1 / 3
    0.334
    """
''', "doctest_probe", "exec"), module.__dict__)
    result = run_module_doctests("doctest_probe", module)
    assert (result.failed, result.attempted) == (1, 2)


@pytest.mark.parametrize("want, got, ok", [
    ("0.3333", "0.33333333333333326", True),
    ("0.3333", "0.3334", False),
    ("0.03125", "0.03125000000000011", True),
    ("(0.25, 1.0)", "(0.25,  1.0000000000001)", True),
    ("[1.0, 0.5]", "[1.0, 0.6]", False),
    ("1.1e-16", "1.1102230246251565e-16", True),
    ("32", "32", True),
    ("32", "33", False),
    ("10000.0", "9999.999999999998", True),
    ("array([0.5, 0.25])", "array([0.5 , 0.25])", True),
    ("float64 0.5", "float32 0.5", False),
    ("inf", "inf", False),  # no numbers: the text comparison decides
])
def test_numbers_match(want, got, ok):
    assert numbers_match(want, got) is ok
    assert FloatTolerantChecker().check_output(want + "\n", got + "\n", OPTIONFLAGS) is (ok or want == got)


def test_tolerance_reads_the_written_digits():
    assert _tolerance("0.25") == pytest.approx(0.005)
    assert _tolerance("1.5e-3") == pytest.approx(0.5e-4)
    assert _tolerance("7") == 0.0
    assert math.isclose(_tolerance("10000.0"), 0.05)
