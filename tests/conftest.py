"""Shared test configuration.

* Hypothesis profiles: ``ci`` (default; derandomized, 50 examples, no deadline) and ``long``
  (1000 examples): ``pytest --hypothesis-profile=long`` or ``HYPOTHESIS_PROFILE=long``.
* ``gpu`` tests are skipped unless a CUDA device is usable (:func:`gpu.gpu_available`, not
  merely an importable CuPy). ``cudasim`` tests run in their own process with
  ``NUMBA_ENABLE_CUDASIM=1`` (excluded from the default run; see tests/gpu/).
* Figures render with the Agg backend.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", derandomize=True, max_examples=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    from gpu import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a usable CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not the tests/gpu/ path
            item.add_marker(skip)
