"""gpu/icl_regression.py on a real GPU against the CPU engine (skipped without a usable GPU).

The GPU and CPU trainers draw the *same* prompts (bit-identical Philox words), so every
comparison is deterministic: raw words exactly, normals within 1e-14 and 8 ulp, prompts within 1e-13,
gradients within 1e-12, weights after 20 Adam steps at the issue's sizes within 1e-9, test
errors within 1e-12 (relative to the largest entry)."""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-300))


@pytest.fixture(scope="module")
def mods():
    pytest.importorskip("numba.cuda")
    from gpu import icl_regression as gi
    from sim import icl_regression as si

    return gi, si


def test_philox_words_and_normals(mods):
    gi, si = mods
    for seed, counter in ((0, (0, 0, 0)), (77, (255, 499_999, 2)), (2**40, (2**63, 1, 1))):
        key = si.data_key(seed)
        np.testing.assert_array_equal(gi.raw_words(key, counter, 5000), si.normals(key, counter, 5000, raw=True))
        out, ref = gi.normals(key, counter, 5000), si.normals(key, counter, 5000)
        assert np.abs(out - ref).max() <= 1e-14
        # a few ulp (of max(|x|, 1): Box-Muller's cos/sin err absolutely), not bit equality: the GPU
        # fuses multiply-adds and divides exactly where the CPU's fastmath kernels may not (B5 item 10)
        assert np.all(np.abs(out - ref) <= 8 * np.spacing(np.maximum(np.abs(ref), 1.0)))


@pytest.mark.parametrize("L,workspace", [(40, None), (3000, None), (40, "global")])
def test_prompts(mods, L, workspace):
    gi, si = mods
    task = si.toeplitz_task(5, 0.5)
    key = si.data_key(9)
    got = gi.generate_prompts(key, *si._task_arrays(task), 700, L, t=3, stream=2, first=100, workspace=workspace)
    ref = si.generate_prompts(task, key, 700, L, t=3, stream=2, first=100, layout="kernel")
    for a, b in zip(got, ref):
        assert rel(a, b) <= 1e-13


def _runs(si):
    iso = si.isotropic_task(5, 0.1)
    return ([si.RunSpec(h, iso, s, 50 + 10 * s + h) for h in (1, 2, 4) for s in range(2)]
            + [si.RunSpec(2, si.toeplitz_task(5, 0.5), 3, 7), si.RunSpec(1, iso, 4, 8, kind="linear")])


def test_trainer_follows_the_cpu_trajectory(mods):
    _, si = mods
    cpu = si.BatchedTrainer(_runs(si), L=40, batch=256)
    gpu = si.BatchedTrainer(_runs(si), L=40, batch=256, device="gpu")
    assert rel(gpu.grads(), cpu.grads()) <= 1e-12
    assert rel(gpu._grad, cpu._grad) <= 1e-12
    tot = np.zeros(cpu.R)
    for _ in range(20):
        tot += cpu.step()
    assert rel(gpu.run_steps(20), tot) <= 1e-9
    st = gpu.state_dict()
    assert int(st["step"]) == 20 and rel(st["theta"], cpu.theta) <= 1e-9
    assert rel(gpu.merged()[0], cpu.merged()[0]) <= 1e-9
    assert rel(gpu.evaluate(2000, t=0), cpu.evaluate(2000, t=0)) <= 1e-9
    assert rel(gpu.evaluate(500, L=1500, stream=2, t=5), cpu.evaluate(500, L=1500, stream=2, t=5)) <= 1e-9


def test_issue_configuration_trains_and_stays_deterministic(mods):
    _, si = mods
    iso = si.isotropic_task(5, 0.1)
    runs = [si.RunSpec(h, iso, s, 1000 + 10 * s + h) for h in (1, 2, 4, 8) for s in range(3)]
    a = si.BatchedTrainer(runs, L=40, batch=256, device="gpu")
    b = si.BatchedTrainer(runs, L=40, batch=256, device="gpu", gpu_options={"tpb": 128})
    la = a.run_steps(300)
    lb = sum(b.run_steps(100) for _ in range(3))
    np.testing.assert_array_equal(a.state_dict()["theta"], b.state_dict()["theta"])  # tpb-independent
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    assert np.all(np.isfinite(la))
    cpu = si.BatchedTrainer(runs, L=40, batch=256)
    for _ in range(300):
        cpu.step()
    assert rel(a.state_dict()["theta"], cpu.theta) <= 1e-8


def test_evaluate_sq_errors_shared_and_global(mods):
    gi, si = mods
    rng = np.random.default_rng(0)
    R, H, D, N = 3, 4, 6, 1
    W = rng.normal(0, 0.3, (R, H, D, D))
    U = rng.normal(0, 0.3, (R, H, D, N))
    task = si.isotropic_task(5, 0.1)
    key = si.data_key(4)
    for L in (10, 400, 2000):
        ref = si.evaluate_sq_errors(W, U, [4, 2, 1], ["softmax", "softmax", "linear"], [0, 0, 1 / 40], key, task,
                                    3000, L, stream=2, t=L)
        out = si.evaluate_sq_errors(W, U, [4, 2, 1], ["softmax", "softmax", "linear"], [0, 0, 1 / 40], key, task,
                                    3000, L, stream=2, t=L, device="gpu")
        assert rel(out, ref) <= 1e-12


def test_divergence_reported_like_the_cpu(mods):
    _, si = mods
    bad = si.TaskSpec(5, np.eye(5), np.array([0.4]), np.ones((1, 5)), np.array([0.3]), np.array([np.nan]))
    runs = [si.RunSpec(2, si.isotropic_task(5), 1, 2), si.RunSpec(2, bad, 1, 3)]
    cpu = si.BatchedTrainer(runs, L=40, batch=64)
    gpu = si.BatchedTrainer(runs, L=40, batch=64, device="gpu")
    with pytest.raises(FloatingPointError) as ec:
        cpu.step()
    with pytest.raises(FloatingPointError) as eg:
        gpu.run_steps(5)
    assert str(eg.value) == str(ec.value)
    assert gpu.step_count == 0
    np.testing.assert_array_equal(gpu.state_dict()["theta"], cpu.theta)
