"""Device detection and the GPU entry points that must behave without a GPU."""
import pytest

from gpu import device_name, gpu_available
from sim.backend import DeviceUnavailable, get_xp, resolve_device


def test_detection_is_a_cached_bool():
    assert isinstance(gpu_available(), bool)
    assert gpu_available() is gpu_available()
    assert (device_name() == "cpu") == (not gpu_available())


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_no_gpu_behaviour():
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceUnavailable, match="no usable CUDA GPU"):
        resolve_device("gpu")
    with pytest.raises(DeviceUnavailable):
        get_xp("gpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
