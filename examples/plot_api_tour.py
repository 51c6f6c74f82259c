"""
API tour: a prediction, a Monte Carlo, a claim
==============================================

This tour goes through the workbench's three layers in a few lines. It uses Bohbot et al.'s
*token sample complexity of attention*.

1. ``theory/`` predicts the error of attention over :math:`n` tokens. By the delta method,
   :math:`\\sqrt n\\,(\\Gamma_{\\mu_n}(x) - \\Gamma_\\mu(x))` tends to a Gaussian with covariance
   :math:`V M(x) V^\\top`. The root-mean-square error is therefore
   :math:`C(x)/\\sqrt n` with :math:`C(x)^2 = \\operatorname{tr} V M(x) V^\\top`. For Gaussian
   tokens :math:`y \\sim N(0, I_d)` and :math:`A = V = I`, the closed form is
   :math:`M(x) = e^{|x|^2}(I + x x^\\top)`, so :math:`C(x)^2 = e^{|x|^2}(d + |x|^2)`.
2. ``sim/`` draws :math:`n` tokens, computes softmax attention of a few queries over them, and
   measures the error against the exact limit :math:`\\Gamma_\\mu(x) = x`.
3. ``studies.claims`` sets the measured constant against the predicted one, with a tolerance of
   :math:`z` standard errors, :math:`z` taken from a family-wise error rate.

The sizes are small (2 dimensions, a few hundred samples), so the script runs in a few seconds.
"""

# %%
# The prediction
# --------------
# A token law from :mod:`theory.token_sample` knows its exponential tilts, and from them the
# delta-method constant :math:`C(x)` (:func:`~theory.token_sample.predicted_rmse` with
# :math:`n = 1`). It also gives the effective-sample threshold :math:`n^*(x)`. Below it, a few
# extreme tokens dominate the softmax. The :math:`1/\sqrt n` law needs more: :math:`n` well above
# the Berry–Esseen scale :math:`n_3(x)`, which is :math:`n^*(x)^3 = e^{3|x|^2}` for Gaussian tokens.
import matplotlib.pyplot as plt
import numpy as np

import theory.token_sample as ts

d = 2
law = ts.GaussianLaw(mean=np.zeros(d), cov=np.eye(d))
A = np.eye(d)
radii = np.linspace(0.0, 1.25, 6)
queries = radii[:, None] * np.eye(d)[0]  # x = r e_1

C_theory = ts.predicted_rmse(law, queries, A, n=1.0)
n_star = ts.effective_sample_threshold(law, queries, A)
assert np.allclose(C_theory**2, np.exp(radii**2) * (d + radii**2))  # the closed form above
for r, c, ns in zip(radii, C_theory, n_star):
    print(f"|x| = {r:4.2f}:  C(x) = {c:6.3f},  n*(x) = {ns:5.2f},  n_3(x) = {ns**3:6.1f}")

# %%
# A small Monte Carlo
# -------------------
# :func:`sim.distributions.make_distribution` pairs the law with a sampler and its exact limit.
# :func:`sim.token_sample.empirical_attention` computes :math:`\Gamma_{\mu_n}(x)` for every query
# over one sample of tokens. Every replicate draws from its own child of one root seed, which is
# how the studies seed their cells.
from sim.backend import make_rng
from sim.distributions import make_distribution
from sim.token_sample import empirical_attention

dist = make_distribution("gaussian", d)
limit = dist.limit(queries, A)
sizes = np.array([64, 256, 1024])
reps = 200
root = np.random.SeedSequence(2025)

sq_err = np.empty((sizes.size, reps, radii.size))
for i, n in enumerate(sizes):
    for j, seed in enumerate(root.spawn(reps)):
        tokens = dist.sample(make_rng(seed), int(n))
        gamma_n = empirical_attention(queries, tokens, A)
        sq_err[i, j] = np.sum((gamma_n - limit) ** 2, axis=-1)

mse = sq_err.mean(axis=1)  # (n, |x|)
mse_se = sq_err.std(axis=1, ddof=1) / np.sqrt(reps)
C_measured = np.sqrt(sizes[:, None] * mse)  # sqrt(n) x RMSE, one value per (n, |x|)
C_se = np.sqrt(sizes[:, None]) * mse_se / (2 * np.sqrt(mse))  # delta method for the square root

# %%
# Both on one figure
# ------------------
# On the left, the measured :math:`\sqrt n \cdot \mathrm{RMSE}` at each :math:`|x|`, set against the
# predicted :math:`C(x)`. They agree where :math:`n \gg n_3(x)`. At :math:`|x| = 1.25`, where
# :math:`n_3 \approx 108`, the smaller samples fall below the curve: the rare extreme tokens that
# carry most of the error have not been drawn yet. On the right, the RMSE against :math:`n` follows
# :math:`C(x)/\sqrt n`.
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
fine = np.linspace(radii[0], radii[-1], 100)
left.plot(fine, np.sqrt(np.exp(fine**2) * (d + fine**2)), "k-", label="theory: C(x)")
for i, n in enumerate(sizes):
    left.errorbar(radii, C_measured[i], yerr=2 * C_se[i], fmt="o", ms=4, capsize=2, label=f"n = {n}")
left.set_xlabel("|x|")
left.set_ylabel(r"$\sqrt{n}\ \times$ RMSE")
left.legend(fontsize=8)
left.set_title("delta-method constant")

for k in (0, 3, 5):
    line = right.loglog(sizes, np.sqrt(mse[:, k]), "o", label=f"|x| = {radii[k]:.2f}")[0]
    right.loglog(sizes, C_theory[k] / np.sqrt(sizes), "-", color=line.get_color())
right.set_xlabel("n (tokens)")
right.set_ylabel("RMSE")
right.legend(fontsize=8)
right.set_title(r"RMSE against $C(x)/\sqrt{n}$")
plt.show()

# %%
# The claim
# ---------
# A study would end with a claim. The measurement is the constant at :math:`|x| = 1` with the
# largest :math:`n`, and the prediction is :math:`C(x)` from ``theory/``. The tolerance is
# :math:`z` standard errors, with :math:`z` from :func:`studies.claims.z_family`. It holds the
# family-wise error at 1 % over the one test made here. A declared allowance covers the finite-n
# bias of the square root. :ref:`claims` gives the rest of the rules.
from studies.claims import ClaimSpec, format_claims, z_family

CONSTANT = ClaimSpec("tour.clt_constant", "Bohbot et al. 2025, Result 1 (notes token_sample §2.1)",
                     "sqrt(n) RMSE at |x| = 1 equals the delta-method constant C(x).")
k = int(np.argmin(np.abs(radii - 1.0)))
z, z_source = z_family(1)
claim = CONSTANT.equal(C_measured[-1, k], C_se[-1, k], C_theory[k], z=z, z_source=z_source, allowance=0.05,
                       allowance_source="declared finite-n allowance of the tour", where=f"|x|={radii[k]:.2f}")
print(format_claims([claim], title="tour"))
