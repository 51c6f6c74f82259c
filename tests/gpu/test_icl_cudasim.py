"""gpu/icl_regression.py on the CUDA simulator against the CPU engine (sim/icl_regression.py).

Deterministic twins, so exact or rounding-level comparisons: Philox words bit for bit, normals
within 2 ulp (the CPU build contracts multiply-adds), prompts within 1e-14, gradients within
1e-12 and the weights after a few Adam steps within 1e-10 (relative to the largest entry).
Tiny grids (the simulator costs ~1.5 ms per thread): d = 2, L = 6, B = 4, 8 threads per block.
"""
import os

import numpy as np
import pytest

pytestmark = pytest.mark.cudasim

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":  # imported by the main process: nothing to do
    pytest.skip("run by tests/gpu/test_cudasim_suite.py with NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

from gpu import icl_regression as gi  # noqa: E402
from sim import icl_regression as si  # noqa: E402

GPU_OPTS = {"tpb": 8, "ppb": 2}


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("key,counter,nb", [
    ((0, 0), (0, 0, 0), 5),
    ((0xFFFFFFFFFFFFFFFF, 0x8000000000000001), (2**64 - 1, 123456789, 2), 7),
    (tuple(si.data_key(2024)), (3, 500000, 1), 9),
])
def test_philox_words_bit_for_bit(key, counter, nb):
    key = np.array(key, dtype=np.uint64)
    np.testing.assert_array_equal(gi.raw_words(key, counter, nb), si.normals(key, counter, nb, raw=True))


def test_philox_words_are_numpys_philox():
    key = si.data_key(7)
    words = gi.raw_words(key, (0, 0, 0), 3)  # counter (j, 0, 0, 0)
    bg = np.random.Philox(key=key, counter=np.array([2**64 - 1, 2**64 - 1, 2**64 - 1, 2**64 - 1], dtype=np.uint64))
    # numpy increments the counter before each block: from all-ones it starts at 0
    np.testing.assert_array_equal(words, bg.random_raw(12))


@pytest.mark.parametrize("seed,counter,nb", [(1, (0, 0, 0), 8), (99, (17, 3, 2), 11)])
def test_normals_match_cpu_within_2_ulp(seed, counter, nb):
    key = si.data_key(seed)
    ref = si.normals(key, counter, nb)
    out = gi.normals(key, counter, nb)
    assert np.all(np.abs(out - ref) <= 2 * np.spacing(np.abs(ref))), np.abs(out - ref).max()
    assert np.mean(out == ref) > 0.5  # mostly bit-identical (same operations, same order)


@pytest.mark.parametrize("task,workspace", [
    (si.isotropic_task(2, 0.1), "shared"),
    (si.toeplitz_task(3, 0.6, 0.2), "shared"),
    (si.multitask_task(), "global"),
])
def test_generate_prompts_match_cpu(task, workspace):
    key = si.data_key(31)
    L = 5
    got = gi.generate_prompts(key, *si._task_arrays(task), 3, L, t=4, stream=2, first=6, tpb=8, ppb=2,
                              workspace=workspace)
    ref = si.generate_prompts(task, key, 3, L, t=4, stream=2, first=6, layout="kernel")
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert rel(a, b) <= 1e-14
    p = si.generate_prompts(task, key, 2, L, t=4, stream=2, first=6, device="gpu")  # the sim dispatch
    np.testing.assert_allclose(p.x, np.swapaxes(ref[0][:2, :task.d], 1, 2), rtol=0, atol=1e-14)


def _runs():
    iso = si.isotropic_task(2, 0.1)
    return [si.RunSpec(2, iso, 5, 11),  # H = 2
            si.RunSpec(1, iso, 5, 12),  # H = 1: head 1 is padding (same data key: common random numbers)
            si.RunSpec(2, si.toeplitz_task(2, 0.4), 6, 13, kind="linear")]


def test_trainer_follows_the_cpu_trajectory():
    cpu = si.BatchedTrainer(_runs(), L=6, batch=4)
    gpu = si.BatchedTrainer(_runs(), L=6, batch=4, device="gpu", gpu_options=GPU_OPTS)
    l_cpu, l_gpu = cpu.grads(), gpu.grads()
    assert rel(l_gpu, l_cpu) <= 1e-12
    assert rel(gpu._grad, cpu._grad) <= 1e-12
    np.testing.assert_array_equal(gpu.views(gpu._grad)[0][1, 1], 0.0)  # padded head: zero gradient
    for _ in range(3):
        lc, lg = cpu.step(), gpu.step()
        assert rel(lg, lc) <= 1e-12
    st = gpu.state_dict()
    assert int(st["step"]) == cpu.step_count == 3 and int(st["adam_t"]) == cpu.opt.t == 3
    assert rel(st["theta"], cpu.theta) <= 1e-10
    assert rel(st["adam_m"], cpu.opt.m) <= 1e-10 and rel(st["adam_v"], cpu.opt.v) <= 1e-10
    for block in gpu.views(st["theta"]):  # run 1 has one head: head 1 stays zero
        np.testing.assert_array_equal(block[1, 1], 0.0)
    Wc, Uc = cpu.merged()
    Wg, Ug = gpu.merged()
    assert rel(Wg, Wc) <= 1e-10 and rel(Ug, Uc) <= 1e-10
    # gradients at the trained parameters, on another step's data
    cpu.grads(t=9)
    gpu.grads(t=9)
    assert rel(gpu._grad, cpu._grad) <= 1e-10
    # validation errors (forward kernel) on the same models
    assert rel(gpu.evaluate(5, L=7, t=3), cpu.evaluate(5, L=7, t=3)) <= 1e-10


def test_results_independent_of_threads_and_run_steps_is_steps():
    a = si.BatchedTrainer(_runs()[:2], L=6, batch=4, device="gpu", gpu_options={"tpb": 8, "ppb": 2})
    b = si.BatchedTrainer(_runs()[:2], L=6, batch=4, device="gpu", gpu_options={"tpb": 16, "ppb": 2})
    total = a.run_steps(2)
    s1 = b.step()
    s2 = b.step()
    np.testing.assert_array_equal(total, s1 + s2)
    np.testing.assert_array_equal(a.state_dict()["theta"], b.state_dict()["theta"])
    assert a.step_count == b.step_count == 2


def test_checkpoint_roundtrip_resumes_exactly():
    a = si.BatchedTrainer(_runs()[:2], L=6, batch=4, device="gpu", gpu_options=GPU_OPTS)
    a.step()
    state = a.state_dict()
    b = si.BatchedTrainer(_runs()[:2], L=6, batch=4, device="gpu", gpu_options=GPU_OPTS)
    b.load_state_dict(state)
    np.testing.assert_array_equal(a.step(), b.step())
    np.testing.assert_array_equal(a.state_dict()["theta"], b.state_dict()["theta"])
    np.testing.assert_array_equal(a.merged()[0], b.merged()[0])


def test_divergence_is_reported_at_the_cpu_step_with_parameters_kept():
    bad = si.TaskSpec(2, np.eye(2), np.array([0.7]), np.ones((1, 2)), np.array([0.1]), np.array([np.nan]))
    runs = [si.RunSpec(1, si.isotropic_task(2), 1, 2), si.RunSpec(1, bad, 1, 3)]
    cpu = si.BatchedTrainer(runs, L=4, batch=2)
    gpu = si.BatchedTrainer(runs, L=4, batch=2, device="gpu", gpu_options={"tpb": 8, "ppb": 1})
    theta0 = gpu.state_dict()["theta"]
    with pytest.raises(FloatingPointError) as ec:
        cpu.step()
    with pytest.raises(FloatingPointError) as eg:
        gpu.run_steps(2)
    assert str(eg.value) == str(ec.value) and "step 0 (runs [1])" in str(eg.value)
    assert gpu.step_count == 0 and gpu.opt.t == 0
    np.testing.assert_array_equal(gpu.state_dict()["theta"], theta0)


@pytest.mark.parametrize("workspace", ["shared", "global"])
def test_evaluate_sq_errors_match_cpu(workspace):
    rng = np.random.default_rng(3)
    R, H, d, N = 2, 2, 2, 1
    D = d + N
    W = rng.normal(0, 0.5, (R, H, D, D))
    U = rng.normal(0, 0.5, (R, H, D, N))
    nh, kind, ls = np.array([2, 1]), np.array([0, 1]), np.array([0.0, 0.2])
    key = si.data_key(5)
    task = si.toeplitz_task(d, 0.3)
    ta = si.stack_tasks(task, R)
    keys = np.broadcast_to(key, (R, 2))
    ref = si.evaluate_sq_errors(W, U, nh, kind, ls, key, task, 3, 9, stream=2, t=9, first=4)
    out = gi.evaluate_sq_errors(W, U, nh, kind, ls, keys, *ta, 3, 9, stream=2, t=9, first=4, tpb=8, ppb=2,
                                workspace=workspace)
    assert out.shape == ref.shape == (R, 3, N)
    assert rel(out, ref) <= 1e-12
    via_sim = si.evaluate_sq_errors(W, U, nh, kind, ls, key, task, 2, 9, stream=2, t=9, first=4, device="gpu")
    assert rel(via_sim, ref[:, :2]) <= 1e-12
