"""The one device seam (sim/backend.py): the registry, one meaning of "on the device", one decision,
and sim asking the seam for its engines (no GPU needed: fake engines and fake device arrays)."""
import numpy as np
import pytest

import gpu
from sim import backend


class FakeDeviceArray:
    """Exposes the CUDA Array Interface, as CuPy and numba device arrays do."""

    __cuda_array_interface__ = {"shape": (1,), "typestr": "<f8", "data": (0, False), "version": 3}


@pytest.fixture
def empty(monkeypatch):
    """A seam with nothing registered (as in a process that never imported gpu)."""
    monkeypatch.setattr(backend, "_ENGINES", {})
    monkeypatch.setattr(backend, "_DEVICE", {})
    return backend


@pytest.fixture
def fake(empty):
    """A seam with a fake device that is present and fake engines that record their calls."""
    calls = []

    def make(name):
        def eng(*args, **kw):
            calls.append(name)
            return name, args, kw
        return lambda: eng

    backend.register_device(lambda: True, lambda: "Fake GPU", lambda: "")
    backend.register_engine("attention.softmax", make("attention.softmax"), max_dim=4)
    for name in ("icl.generate_prompts", "icl.evaluate_sq_errors", "random.generator",
                 "tensor_attention.polynomial_num_den", "random_features.eigh"):
        backend.register_engine(name, make(name))
    return calls


def test_nothing_registered_means_cpu_only(empty):
    assert backend.registered_engines() == ()
    assert backend.resolve_device("auto") == "cpu"
    assert backend.resolve_device("cpu") == "cpu"
    with pytest.raises(backend.DeviceUnavailable) as e:
        backend.resolve_device("gpu")
    assert "\n" not in str(e.value) and "no usable CUDA GPU" in str(e.value)
    with pytest.raises(backend.EngineUnavailable, match="import gpu first") as e:
        backend.engine("attention.softmax")
    assert "\n" not in str(e.value)
    assert backend.device_engine("attention.softmax", FakeDeviceArray()) is None
    assert not backend.device_available() and backend.device_name() == "cpu"


def test_importing_gpu_registers_every_engine_and_the_detector():
    gpu.register()  # idempotent; the import already did it
    assert set(gpu.ENGINES) <= set(backend.registered_engines())
    assert backend.device_available() == gpu.gpu_available()
    for name, (_, _, max_dim) in gpu.ENGINES.items():
        assert backend.engine_max_dim(name) == max_dim
        assert callable(backend.engine(name))  # loads the module lazily, here
    assert backend.engine("attention.softmax") is __import__("gpu.attention").attention.softmax_attention


def test_one_meaning_of_on_the_device():
    dev, host = FakeDeviceArray(), np.zeros(3)
    assert backend.on_device(dev) and backend.on_device(host, dev) and backend.on_device(dev, None, 1.0)
    assert not backend.on_device(host) and not backend.on_device() and not backend.on_device(None, 2)


def test_the_engine_decision_follows_device_registry_and_limit(fake):
    dev = FakeDeviceArray()
    assert backend.device_engine("attention.softmax", dev, dims=(2, 4)) is not None
    assert backend.device_engine("attention.softmax", dev, dims=(5,)) is None  # over max_dim
    assert backend.device_engine("attention.softmax", np.zeros(2), dims=(2,)) is None  # host arrays
    assert backend.device_engine("attention.self_moments", dev) is None  # not registered
    assert backend.resolve_device("gpu") == "gpu" and backend.device_name() == "Fake GPU"


def test_a_missing_device_says_why(empty):
    backend.register_device(lambda: False, lambda: "x", lambda: "CuPy is not installed")
    with pytest.raises(backend.DeviceUnavailable, match="CuPy is not installed"):
        backend.resolve_device("gpu")
    assert backend.resolve_device("auto") == "cpu"


def test_sim_asks_the_seam_for_its_engines(fake):
    from sim import icl_regression as icl
    from sim.attention import softmax_attention

    rng = np.random.default_rng(0)
    a, keys = rng.standard_normal((2, 2)), rng.standard_normal((5, 2))
    name, args, _ = softmax_attention(a, keys, method="cuda")
    assert name == "attention.softmax" and args[1] is keys and args[2] is keys
    out, _ = softmax_attention(a, keys)  # NumPy arrays: the CPU engine, whatever is registered
    assert isinstance(out, np.ndarray)
    task = icl.isotropic_task(2, 0.1)
    with pytest.raises(ValueError):  # the fake returns a tuple of 3, not the prompt arrays
        icl.generate_prompts(task, icl.data_key(1), 2, 3, device="gpu")
    assert fake[-1] == "icl.generate_prompts"
    gen = backend.make_rng(np.random.SeedSequence(5), "gpu")
    assert gen[0] == "random.generator" and isinstance(gen[1][0], np.random.SeedSequence)


def test_sim_without_engines_fails_in_one_line_or_runs_on_the_host(empty):
    from sim.attention import softmax_attention

    rng = np.random.default_rng(1)
    a, keys = rng.standard_normal((2, 2)), rng.standard_normal((5, 2))
    with pytest.raises(backend.EngineUnavailable):
        softmax_attention(a, keys, method="cuda")
    ref, _ = softmax_attention(a, keys, method="naive")
    np.testing.assert_allclose(softmax_attention(a, keys)[0], ref, atol=1e-14)
