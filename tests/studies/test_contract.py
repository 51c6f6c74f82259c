"""The study contract (:mod:`studies.checks`), checked on every study of the catalogue: each
named check that applies to an entry, decided from its capabilities, runs as one test. The
studies' ``--quick`` stores are made once per session and shared by the checks that read them."""
import pytest

from studies.catalog import STUDIES, requirement_met
from studies.checks import Bench, checks_for

CASES = [pytest.param(entry, name, check, id=f"{entry.name}-{name}")
         for entry in STUDIES for name, check in checks_for(entry)]


@pytest.fixture(scope="session")
def bench(tmp_path_factory):
    return Bench(tmp_path_factory.mktemp("contract"))


@pytest.mark.parametrize("entry, name, check", CASES)
def test_contract(entry, name, check, bench):
    if name not in ("shape", "help"):
        ok, why = requirement_met(entry)
        if not ok:
            pytest.skip(why)
    check(entry, bench)


def test_every_study_module_is_in_the_catalogue():
    """A module of studies/ with the study shape's entry points is a catalogue entry, and every
    catalogue entry's module has them."""
    import importlib
    import pkgutil

    import studies

    shaped = set()
    for info in pkgutil.walk_packages(studies.__path__, "studies."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        if hasattr(mod, "STUDY") and hasattr(mod, "parts") and hasattr(mod, "analyze"):
            shaped.add(info.name)
    assert shaped == {e.module for e in STUDIES}
