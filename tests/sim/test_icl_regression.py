"""sim/icl_regression.py: random stream, prompts, gradients, trainer, metrics, Monte Carlo predictors.

Statistical checks use fixed seeds and CLT bands with z = 5 (two-sided false-alarm ~6e-7)."""
import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import icl_regression as icl
from theory import icl_regression as th

Z = 5.0
TASK = icl.isotropic_task(5, 0.1)


# ================================================================ random stream
@pytest.mark.parametrize("seed,counter", [(0, (0, 0, 0)), (5, (3, 7, 1)), (123, (2**40, 9, 2))])
def test_philox_is_bit_identical_to_numpy(seed, counter):
    """Blocks j = 0..5 at counter (j, *counter) equal numpy's Philox4x64-10 (which increments its
    256-bit counter before each block, so it starts one below)."""
    key = icl.data_key(seed)
    raw = icl.normals(key, counter, 6, raw=True)
    value = sum(int(c) << (64 * (k + 1)) for k, c in enumerate(counter)) - 1  # (0, *counter) - 1
    words = np.array([(value >> (64 * k)) & (2**64 - 1) for k in range(4)], dtype=np.uint64)
    g = np.random.Philox(key=key)
    state = g.state
    state["state"]["counter"] = words
    state["buffer_pos"] = 4
    g.state = state
    np.testing.assert_array_equal(raw, g.random_raw(24))


def test_box_muller_matches_numpy_transcendentals():
    key = icl.data_key(1)
    nb = 4000
    z = icl.normals(key, (0, 0, 0), nb)
    r = icl.normals(key, (0, 0, 0), nb, raw=True).reshape(nb, 4)
    one = np.uint64(0x3FF0000000000000)
    u1 = 2.0 - (((r[:, [0, 2]] >> np.uint64(12)) | one).view(np.float64))
    u2 = (((r[:, [1, 3]] >> np.uint64(12)) | one).view(np.float64)) - 1.0
    rad = np.sqrt(-2 * np.log(u1))
    ref = np.concatenate([rad[:, 0] * np.cos(2 * np.pi * u2[:, 0]), rad[:, 0] * np.sin(2 * np.pi * u2[:, 0]),
                          rad[:, 1] * np.cos(2 * np.pi * u2[:, 1]), rad[:, 1] * np.sin(2 * np.pi * u2[:, 1])])
    assert np.abs(z - ref).max() < 1e-13


def test_normals_have_standard_gaussian_moments():
    n = 400_000
    z = icl.normals(icl.data_key(2), (0, 1, 0), n // 4)
    for p, m_true, var_p in ((1, 0.0, 1.0), (2, 1.0, 2.0), (3, 0.0, 15.0), (4, 3.0, 96.0)):
        # Var(z^p) = E z^2p - (E z^p)^2: 1, 3-1, 15, 105-9
        assert abs(np.mean(z**p) - m_true) <= Z * math.sqrt(var_p / n), p
    # tails: P(|z| > 3) = 0.0027
    q = np.mean(np.abs(z) > 3)
    assert abs(q - 0.0026998) <= Z * math.sqrt(0.0027 / n)
    # no correlation between the four lanes of a block
    lanes = z.reshape(4, -1)
    c = np.corrcoef(lanes)
    assert np.abs(c - np.eye(4)).max() <= Z / math.sqrt(n / 4)


# ====================================================================== prompts
def test_prompt_layout_follows_the_documented_normals():
    d, N, L = 5, 1, 7
    key = icl.data_key(9)
    Z_, zq, yq, beta = icl.generate_prompts(TASK, key, 3, L, t=4, stream=icl.STREAM_TEST, layout="kernel")
    nb = (L * d + L * N + d + N * d + N + 3) // 4
    for b in range(3):
        g = icl.normals(key, (b, 4, icl.STREAM_TEST), nb)
        x = g[: d * L].reshape(d, L)
        e = g[d * L: d * L + L]
        xq = g[d * L + L: d * L + L + d]
        bt = g[d * L + L + d: d * L + L + 2 * d] / math.sqrt(d)
        eq = g[d * L + L + 2 * d]
        np.testing.assert_allclose(Z_[b, :d], x, rtol=0, atol=1e-15)
        np.testing.assert_allclose(beta[b, 0], bt, atol=1e-15)
        np.testing.assert_allclose(Z_[b, d], bt @ x + math.sqrt(0.1) * e, atol=1e-14)
        np.testing.assert_allclose(zq[b], np.r_[xq, 0.0], atol=1e-15)
        assert yq[b, 0] == pytest.approx(bt @ xq + math.sqrt(0.1) * eq, abs=1e-14)


def test_natural_layout_and_distinct_streams():
    p = icl.generate_prompts(TASK, icl.data_key(0), 4, 6)
    Z_, zq, yq = icl.prompts_to_tokens(p)
    Zk, zqk, yqk, _ = icl.generate_prompts(TASK, icl.data_key(0), 4, 6, layout="kernel")
    np.testing.assert_array_equal(Z_, np.swapaxes(Zk, 1, 2))
    np.testing.assert_array_equal(zq, zqk)
    other = icl.generate_prompts(TASK, icl.data_key(0), 4, 6, stream=icl.STREAM_VAL)
    assert not np.allclose(p.x, other.x)
    later = icl.generate_prompts(TASK, icl.data_key(0), 2, 6, first=2)
    np.testing.assert_array_equal(later.x, p.x[2:])


def test_anisotropic_covariates_have_the_toeplitz_covariance():
    task = icl.toeplitz_task(5, 0.5, 0.1)
    n = 4000
    p = icl.generate_prompts(task, icl.data_key(3), n, 10)
    x = p.x.reshape(-1, 5)
    C = x.T @ x / x.shape[0]
    Sig = th.toeplitz_cov(5, 0.5)
    se = np.sqrt((1 + Sig**2) / x.shape[0])  # Var(x_i x_j) = S_ii S_jj + S_ij^2 for Gaussians
    assert np.all(np.abs(C - Sig) <= Z * se)
    # beta ~ N(0, I/d) independently of Sigma; the noise has variance sigma2
    assert abs(p.beta.var() - 0.2) <= Z * 0.2 * math.sqrt(2 / p.beta.size)
    res = p.y[..., 0] - np.einsum("nld,nd->nl", p.x, p.beta[:, 0])
    assert abs(res.var() - 0.1) <= Z * 0.1 * math.sqrt(2 / res.size)


def test_multitask_prompts_use_their_supports_and_noiseless_queries():
    task = icl.multitask_task()
    p = icl.generate_prompts(task, icl.data_key(4), 500, 12)
    assert np.all(p.beta[:, 0, 4:] == 0) and np.all(p.beta[:, 1, :2] == 0)
    np.testing.assert_allclose(p.yq, np.einsum("nd,nkd->nk", p.xq, p.beta), atol=1e-13)
    res = p.y - np.einsum("nld,nkd->nlk", p.x, p.beta)
    assert abs(res.var() - 0.4) <= Z * 0.4 * math.sqrt(2 / res.size)
    nz = p.beta[:, 0, :4]
    assert abs(nz.var() - 1.0) <= Z * math.sqrt(2 / nz.size)


# ==================================================================== gradients
def _random_problem(rng, R, H, D, N, B, L, nh=None):
    theta = np.stack([icl.init_params(rng, H if nh is None else int(nh[r]), D, N, H) for r in range(R)])
    Q, K, V, O = icl.param_views(theta, H, D, N)
    Z_ = rng.standard_normal((R, B, L, D))
    zq = np.concatenate([rng.standard_normal((R, B, D - N)), np.zeros((R, B, N))], axis=2)
    yq = rng.standard_normal((R, B, N))
    return theta, (Q, K, V, O), Z_, zq, yq


@settings(max_examples=30)
@given(H=st.integers(1, 4), N=st.integers(1, 2), d=st.integers(1, 4), L=st.integers(2, 11), B=st.integers(1, 9),
       kind=st.sampled_from(["softmax", "linear"]), pad=st.booleans(), seed=st.integers(0, 2**16))
def test_fast_gradients_equal_the_reference(H, N, d, L, B, kind, pad, seed):
    rng = np.random.default_rng(seed)
    R, D = 2, d + N
    nh = np.array([H, max(1, H - 1)]) if pad else np.array([H, H])
    theta, (Q, K, V, O), Z_, zq, yq = _random_problem(rng, R, H, D, N, B, L, nh)
    Q *= 3.0  # larger scores: a non-uniform softmax
    l1, g1 = icl.loss_and_grads(Q, K, V, O, Z_, zq, yq, kind=kind, lin_scale=1.0 / L, n_heads=nh)
    l2, g2 = icl.reference_loss_and_grads(Q, K, V, O, Z_, zq, yq, kind=kind, lin_scale=1.0 / L)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    for a, b in zip(g1, g2):
        assert np.abs(a - b).max() <= 1e-11 * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("N,kind", [(1, "softmax"), (2, "softmax"), (1, "linear"), (2, "linear")])
def test_gradients_match_central_finite_differences(N, kind):
    """Acceptance: analytic gradients vs central differences, relative error < 1e-5 (float64),
    for every parameter tensor, single- and multi-output, on a batch of 8."""
    rng = np.random.default_rng(11 + N)
    d, H, B, L = 4, 3, 8, 10
    D = d + N
    theta, _, Z_, zq, yq = _random_problem(rng, 1, H, D, N, B, L)
    theta[:, : 2 * H * D * D] *= 2.0

    c = 1.0 / math.sqrt(D)

    def loss(th_):  # the loss itself, from the einsum forward pass
        W, U = icl.merge(*icl.param_views(th_, H, D, N), c)
        yhat = icl.reference_forward(W, U, Z_, zq, kind=kind, lin_scale=1.0 / L)[0]
        return np.mean((yhat - yq) ** 2)

    Q, K, V, O = icl.param_views(theta, H, D, N)
    _, grads = icl.loss_and_grads(Q, K, V, O, Z_, zq, yq, kind=kind, lin_scale=1.0 / L)
    _, ref = icl.reference_loss_and_grads(Q, K, V, O, Z_, zq, yq, kind=kind, lin_scale=1.0 / L)
    flat = np.concatenate([g.reshape(-1) for g in grads])
    flat_ref = np.concatenate([g.reshape(-1) for g in ref])
    fd = np.empty_like(flat)
    h = 1e-6
    for i in range(flat.size):
        tp, tm = theta.copy(), theta.copy()
        tp[0, i] += h
        tm[0, i] -= h
        fd[i] = (loss(tp) - loss(tm)) / (2 * h)
    sizes = [g.size for g in grads]
    cuts = np.cumsum(sizes)[:-1]
    for name, a, r, b in zip("QKVO", np.split(flat, cuts), np.split(flat_ref, cuts), np.split(fd, cuts)):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5, name  # fast path
        assert np.linalg.norm(r - b) / np.linalg.norm(b) < 1e-5, name  # reference


def test_fused_training_kernel_equals_generation_plus_gradients():
    runs = [icl.RunSpec(H, TASK, s, 10 + s) for s, H in ((0, 2), (1, 3))]
    tr = icl.BatchedTrainer(runs, L=9, batch=20)
    loss = tr.grads(t=5)
    W, U = tr.merged()
    for r in range(2):
        Zk, zq, yq, _ = icl.generate_prompts(TASK, tr.keys[r], 20, 9, t=5, stream=icl.STREAM_TRAIN, layout="kernel")
        l2, G, gu, _ = icl.loss_and_grads_merged(W[r:r + 1], U[r:r + 1], np.swapaxes(Zk, 1, 2)[None], zq[None],
                                                 yq[None], n_heads=[tr.n_heads[r]])
        assert loss[r] == l2[0]
        np.testing.assert_array_equal(tr._G[r].sum(0), G[0])
        np.testing.assert_array_equal(tr._gu[r].sum(0), gu[0])


def test_evaluation_matches_the_reference_forward():
    runs = [icl.RunSpec(2, TASK, 0, 1), icl.RunSpec(1, TASK, 1, 2)]
    tr = icl.BatchedTrainer(runs, L=12, batch=16)
    for _ in range(3):
        tr.step()
    sq = tr.evaluate(50, L=17, stream=icl.STREAM_TEST, t=3)
    W, U = tr.merged()
    for r in range(2):
        p = icl.generate_prompts(TASK, tr.keys[r], 50, 17, t=3, stream=icl.STREAM_TEST)
        Z_, zq, yq = icl.prompts_to_tokens(p)
        yhat, _, _ = icl.reference_forward(W[r:r + 1], U[r:r + 1], Z_[None], zq[None])
        np.testing.assert_allclose(sq[r], (yhat[0] - yq) ** 2, rtol=1e-11, atol=1e-14)


# ======================================================================= trainer
def test_padded_heads_stay_zero_and_change_nothing():
    alone = icl.BatchedTrainer([icl.RunSpec(2, TASK, 0, 5)], L=8, batch=32)
    mixed = icl.BatchedTrainer([icl.RunSpec(2, TASK, 0, 5), icl.RunSpec(4, TASK, 1, 6)], L=8, batch=32)
    for _ in range(20):
        alone.step()
        mixed.step()
    a = alone.views()
    m = mixed.views()
    for x, y in zip(a, m):
        np.testing.assert_array_equal(x[0], y[0, :2])
        assert np.all(y[0, 2:] == 0)


def test_checkpoint_round_trip_resumes_bit_for_bit():
    runs = [icl.RunSpec(H, TASK, 3, H) for H in (1, 2)]
    a = icl.BatchedTrainer(runs, L=10, batch=24)
    for _ in range(30):
        a.step()
    b = icl.BatchedTrainer(runs, L=10, batch=24)
    for _ in range(12):
        b.step()
    state = {k: v.copy() for k, v in b.state_dict().items()}
    c = icl.BatchedTrainer(runs, L=10, batch=24)
    c.load_state_dict(state)
    for _ in range(18):
        c.step()
    np.testing.assert_array_equal(a.theta, c.theta)
    np.testing.assert_array_equal(a.opt.v, c.opt.v)
    other = icl.BatchedTrainer([icl.RunSpec(1, TASK, 4, 1), icl.RunSpec(2, TASK, 3, 2)], L=10, batch=24)
    with pytest.raises(ValueError):
        other.load_state_dict(state)


def test_results_do_not_depend_on_the_thread_count():
    runs = [icl.RunSpec(2, TASK, s, s) for s in range(3)]
    out = []
    old = numba.get_num_threads()
    try:
        for nt in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(nt)
            tr = icl.BatchedTrainer(runs, L=10, batch=40)
            for _ in range(5):
                tr.step()
            out.append(tr.theta.copy())
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(out[0], out[-1])


def test_reference_trainer_steps_and_agrees_with_the_fast_gradients():
    run = icl.RunSpec(2, TASK, 0, 3)
    ref = icl.ReferenceTrainer(run, L=12, batch=16)
    Z_, zq, yq = ref.batch()
    Q, K, V, O = icl.param_views(ref.theta, 2, 6, 1)
    _, g_fast = icl.loss_and_grads(Q, K, V, O, Z_, zq, yq)
    _, g_ref = icl.reference_loss_and_grads(Q, K, V, O, Z_, zq, yq)
    for a, b in zip(g_fast, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    l0 = np.mean([ref.step() for _ in range(5)])
    assert np.isfinite(l0)


def test_non_finite_training_raises():
    tr = icl.BatchedTrainer([icl.RunSpec(1, TASK, 0, 0, kind="linear")], L=40, batch=64)
    tr.theta[:] = 1e160  # scores overflow
    with pytest.raises(FloatingPointError, match="diverged"):
        tr.step()


# ======================================================================= metrics
def test_pattern_metrics_on_constructed_heads():
    d, D = 5, 6
    W = np.zeros((3, D, D))
    U = np.zeros((3, D, 1))
    W[0, :d, :d] = 0.13 * np.eye(d)
    U[0, d, 0] = 3.5
    W[1, :d, :d] = np.diag([0.1, 0.2, 0.1, 0.2, 0.1]) + 0.01
    U[1, :, 0] = [0.0, 0.0, 0.0, 0.0, 1.0, -1.0]
    m = icl.pattern_metrics(W, U, d)
    assert m["omega"][0] == pytest.approx(0.13) and m["mu"][0] == 3.5
    assert m["diag_ratio"][0] == pytest.approx(1.0) and m["diag_cv2"][0] == pytest.approx(0.0, abs=1e-25)
    assert m["last_entry_ratio"][0] == pytest.approx(1.0)
    dg = np.diag(W[1, :d, :d])
    assert m["diag_ratio"][1] == pytest.approx(np.linalg.norm(dg) / np.linalg.norm(W[1, :d, :d]))
    assert m["diag_cv2"][1] == pytest.approx(dg.var() / dg.mean() ** 2)
    assert m["last_entry_ratio"][1] == pytest.approx(1 / math.sqrt(2))
    assert m["offdiag_max"][1] == pytest.approx(0.01) and m["ov_x_max"][1] == pytest.approx(1.0)
    assert m["omega"][2] == 0 and m["diag_ratio"][2] == 0 and m["last_entry_ratio"][2] == 0


def test_head_sums_zero_sum_and_eta():
    om = np.array([[0.13, -0.13, 0.5], [0.0, 0.0, 0.0]])
    mu = np.array([[3.5, -3.4, 9.0], [0.0, 0.0, 0.0]])
    s = icl.head_sums(om, mu, exists=np.array([True, True, False]))
    assert s["sum_mu"][0] == pytest.approx(0.1) and s["sum_abs_mu"][0] == pytest.approx(6.9)
    assert s["zero_sum_ratio"][0] == pytest.approx(0.1 / 6.9) and s["zero_sum_ratio"][1] == 0
    assert s["eta"][0] == pytest.approx(0.13 * 3.5 + 0.13 * 3.4)


# ================================================================ model <-> predictors
def test_pattern_model_equals_the_reduced_predictors():
    """With W = omega I (x-block) and u = mu e_D the softmax layer is the reduced model of notes icl_regression §5,
    and the linear layer normalised by 1/L_train is GD with step mu omega L'/L_train."""
    d, D, Lp, Ltr = 5, 6, 23, 40
    p = icl.generate_prompts(TASK, icl.data_key(8), 200, Lp)
    Z_, zq, yq = icl.prompts_to_tokens(p)
    om, mu = np.array([0.2, -0.2, 0.05]), np.array([3.0, -2.5, 0.7])
    W = np.zeros((1, 3, D, D))
    U = np.zeros((1, 3, D, 1))
    for h in range(3):
        W[0, h, :d, :d] = om[h] * np.eye(d)
        U[0, h, d, 0] = mu[h]
    _, _, _, sq = icl.loss_and_grads_merged(W, U, Z_[None], zq[None], yq[None], want_grad=False)
    pred = icl.predict_softmax_heads(p, om, mu)
    np.testing.assert_allclose(sq[0, :, 0], (pred - p.yq[:, 0]) ** 2, rtol=1e-10, atol=1e-14)
    _, _, _, sql = icl.loss_and_grads_merged(W[:, :1], U[:, :1], Z_[None], zq[None], yq[None], kind="linear",
                                             lin_scale=1.0 / Ltr, want_grad=False)
    g = icl.predict_gd(p, mu[0] * om[0] * Lp / Ltr)
    np.testing.assert_allclose(sql[0, :, 0], (g - p.yq[:, 0]) ** 2, rtol=1e-10, atol=1e-14)


def _mc(pred, p):
    e = (pred - p.yq[:, 0]) ** 2
    return e.mean(), e.std(ddof=1) / math.sqrt(e.size)


@pytest.mark.parametrize("Lp", [10, 40])
def test_monte_carlo_risks_match_the_exact_formulas(Lp):
    d, s2, n = 5, 0.1, 40_000
    p = icl.generate_prompts(TASK, icl.data_key(20 + Lp), n, Lp)
    for eta in (0.5, 0.897):
        m, se = _mc(icl.predict_gd(p, eta), p)
        assert abs(m - th.gd_risk(eta, d, Lp, s2)) <= Z * se
        m, se = _mc(icl.predict_dgd(p, eta), p)
        assert abs(m - th.dgd_risk(eta, d, Lp, s2)) <= Z * se
    # ridge: its squared error minus the closed-form conditional Bayes risk has mean 0 (paired)
    diff = (icl.predict_ridge(p, d * s2) - p.yq[:, 0]) ** 2 - icl.ridge_conditional_risk(p, s2)
    assert abs(diff.mean()) <= Z * diff.std(ddof=1) / math.sqrt(n)


@pytest.mark.parametrize("centered", [False, True])
def test_preconditioned_predictor_matches_its_risk(centered):
    d, Lp, s2, rho, n = 5, 40, 0.1, 0.5, 40_000
    task = icl.toeplitz_task(d, rho, s2)
    p = icl.generate_prompts(task, icl.data_key(31), n, Lp)
    Sig = th.toeplitz_cov(d, rho)
    for G in (th.optimal_preconditioner(Sig, Lp, s2, centered), 0.8 * np.eye(d)):
        m, se = _mc(icl.predict_preconditioned(p, G, centered=centered), p)
        assert abs(m - th.preconditioned_risk(G, Sig, Lp, s2, centered)) <= Z * se


def test_finite_bayes_risk_approaches_marchenko_pastur():
    """Mean of the conditional Bayes risk at d = 40, L = 320 (xi = 1/8) vs the MP limit: the
    finite-size bias is O(1/d), far below 1%."""
    d, Lp, s2 = 40, 320, 0.1
    task = icl.isotropic_task(d, s2)
    p = icl.generate_prompts(task, icl.data_key(5), 200, Lp)
    r = icl.ridge_conditional_risk(p, s2)
    assert abs(r.mean() / th.ridge_bayes_risk_mp(s2, d / Lp) - 1) < 0.01


@pytest.mark.slow
def test_fresh_and_cached_kernels_compute_identical_bits(tmp_path):
    """Resumption across processes needs the JIT cache to change nothing: a run that compiles
    the kernels and one that loads them from the cache must agree bit for bit (Numba's
    parallel=True gufuncs did not; the kernels are serial + a thread pool for that reason)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys, numpy as np\n"
        "from sim import icl_regression as icl\n"
        "t = icl.isotropic_task(5, 0.1)\n"
        "tr = icl.BatchedTrainer([icl.RunSpec(2, t, 0, 1), icl.RunSpec(4, t, 1, 2)], L=40, batch=64)\n"
        "[tr.step() for _ in range(20)]\n"
        "np.savez(sys.argv[1], theta=tr.theta, sq=tr.evaluate(200))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for name in ("fresh", "cached"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.npz")], check=True, env=env,
                       cwd=tmp_path, timeout=600)
    a, b = np.load(tmp_path / "fresh.npz"), np.load(tmp_path / "cached.npz")
    np.testing.assert_array_equal(a["theta"], b["theta"])
    np.testing.assert_array_equal(a["sq"], b["sq"])


# ============================================================ gradient descent on the pattern manifold
def _manifold_batch(d=3, L=7, B=5, seed=3):
    task = icl.isotropic_task(d, 0.1)
    Z, zq, yq, _ = icl.generate_prompts(task, icl.data_key(seed), B, L, layout="kernel")
    return np.swapaxes(Z, 1, 2)[None], zq[None], yq[None]


def test_manifold_gradient_is_the_chain_rule_of_the_exact_loss():
    """dMSE/domega_h and dMSE/dmu_h of pattern-manifold heads (notes icl_regression §5.7) equal
    central finite differences of the reference forward's MSE on the same prompts."""
    from sim.icl_regression.manifold import manifold_grad, manifold_params

    d = 3
    Z, zq, yq = _manifold_batch(d)
    om, mu = np.array([[0.3, -0.2]]), np.array([[0.7, -0.5]])

    def mse(o, m):
        W, U = manifold_params(o, m, d)
        yhat = icl.reference_forward(W, U, Z, zq)[0]
        return float(np.mean((yhat - yq) ** 2))

    loss, g_om, g_mu = manifold_grad(om, mu, Z, zq, yq, d)
    assert loss[0] == pytest.approx(mse(om, mu), rel=1e-12)
    eps = 1e-6
    for h in range(2):
        e = np.zeros_like(om)
        e[0, h] = eps
        assert g_om[0, h] == pytest.approx((mse(om + e, mu) - mse(om - e, mu)) / (2 * eps), rel=1e-6)
        assert g_mu[0, h] == pytest.approx((mse(om, mu + e) - mse(om, mu - e)) / (2 * eps), rel=1e-6)


def test_mirrored_queries_keep_the_antisymmetric_pair_antisymmetric():
    """From (a, -a) the mirrored prompts give exactly antisymmetric gradients (notes §5.7): after
    300 steps the pair is antisymmetric to rounding; replicates see different prompts; the same
    key gives the same run; the recorded time is the sum of the steps."""
    from sim.icl_regression.manifold import manifold_gd

    kw = dict(L=20, dts=np.full(300, 0.02), log_at=[0, 100, 300], runs=3, batch=16)
    res = manifold_gd([0.05, -0.05], [0.05, -0.05], TASK, icl.data_key(1), **kw)
    assert res["omega"].shape == (3, 3, 2) and res["loss"].shape == (3, 3)
    np.testing.assert_allclose(res["time"], [0.0, 2.0, 6.0])
    for k in ("omega", "mu"):
        assert np.abs(res[k].sum(-1)).max() <= 1e-14 * np.abs(res[k]).max()
    assert np.all(res["omega"][-1, :, 0] > 0.05)  # it learned (the plateau is left from the start's x)
    assert np.ptp(res["omega"][-1, :, 0]) > 0  # independent replicates
    again = manifold_gd([0.05, -0.05], [0.05, -0.05], TASK, icl.data_key(1), **kw)
    np.testing.assert_array_equal(again["omega"], res["omega"])


def test_manifold_gradient_is_unbiased_for_the_exact_pair_risk():
    """At an antisymmetric state the mean of dMSE/dmu_1 over fresh mirrored prompts is the
    derivative of the exact pair risk sigma2 + 1 - 2 m A + m^2 B (notes icl_regression §6.5)
    along the first head, m B - A, within z = 5 standard errors over 40 independent batches."""
    from sim.icl_regression.manifold import _batch, manifold_grad

    d, L, s2, w, m = 4, 16, 0.1, 0.3, 0.8
    task = icl.isotropic_task(d, s2)
    R = 40
    tokens, zq, yq = _batch(task, icl.data_key(11), 0, R, 500, L)
    _, _, g_mu = manifold_grad(np.tile([w, -w], (R, 1)), np.tile([m, -m], (R, 1)), tokens, zq, yq, d)
    A, B = th.kernel_coefficients(w, d, L, s2, heads=2)
    est, se = g_mu[:, 0].mean(), g_mu[:, 0].std(ddof=1) / math.sqrt(R)
    np.testing.assert_allclose(g_mu[:, 1], -g_mu[:, 0], atol=1e-12)
    assert abs(est - (m * B - A)) < Z * se, (est, se, m * B - A)


def test_manifold_gd_refuses_what_it_does_not_model():
    from sim.icl_regression.manifold import manifold_gd

    with pytest.raises(ValueError, match="isotropic"):
        manifold_gd([0.1], [0.1], icl.toeplitz_task(3, 0.5), icl.data_key(0), L=8, dts=[0.1], log_at=[0, 1])
    with pytest.raises(ValueError, match="increasing"):
        manifold_gd([0.1], [0.1], TASK, icl.data_key(0), L=8, dts=[0.1], log_at=[0, 2])
