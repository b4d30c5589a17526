"""Why the ridge CV picks the weakest strength at n_train 10,000, and what an unpenalised common level
changes (notes: benchmarks/results/ridge_selection_notes.md).

The ridge solved exactly in kernel form (``w = X^T (X X^T + ridge I)^{-1} y``: the design has fewer
rows than effects), on the runs of ``bench_ridge_scale.py``, two ways: centred at ``A = 1/batch, B = 0``
(what ``linear`` fits now) and with a common level per test example left unpenalised
(``A_i = 1/batch + c_a + w_a,i``, ``B_i = c_b + w_b,i``, penalty on ``w``).
CV errors over decades (4 contiguous folds, the repo's criterion) and the final fit's held-out MSE.

    python benchmarks/ridge_common_level.py 1000 16 100 8 4 out.json       # CPU, 2 minutes
    python benchmarks/ridge_common_level.py 10000 32 500 32 8 out.json     # the benchmark's size: GPU (2 minutes)

Arguments: n_train, runs, steps, test examples, held-out runs, output JSON.
"""
import json, sys, time
import numpy as np
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from bayes_simfluence import cross_validation as cv, ridge as R, design
from bayes_simfluence.synthetic import synthetic_runs

n_train, n_runs, n_steps, n_tests, heldout = (int(a) for a in sys.argv[1:6])
out = sys.argv[6]
runs, _ = synthetic_runs(n_train=n_train, n_tests=n_tests, n_runs=n_runs, n_steps=n_steps, batch_size=16,
                         effect_scale=0.05, noise_scale=0.005, seed=0)
train, held = runs.split(heldout)
tests = np.unique(np.linspace(0, train.n_tests - 1, min(16, train.n_tests)).round().astype(int))
train, held = train.select_tests(tests), held.select_tests(tests)
n = n_train
base = lambda r: R.step_baseline(r.curricula, "linear", "per_slot")
scale = design.mean_diagonal(design.design(train.curricula, train.losses, base(train)), n, "linear")
rels = 10.0 ** np.arange(-6.0, 5.0)

def fits(part):
    """{(common, rel): w [tests, 2n]} exact ridge solutions on runs ``part``."""
    prob = design.design(part.curricula, part.losses, base(part))
    C = jnp.asarray(R.count_matrix(part.curricula, n).toarray())
    G = C @ C.T
    nf = jnp.asarray((prob.slots >= 0).sum(1), jnp.float64)
    eye = jnp.eye(G.shape[0])
    res = {}
    for m in range(len(tests)):
        p, y = jnp.asarray(prob.previous[m]), jnp.asarray(prob.target[m])
        K = (p[:, None] * p[None, :] + 1.0) * G
        Z = jnp.stack([p * nf, nf], 1)
        Q, _ = jnp.linalg.qr(Z)
        P = lambda v: v - Q @ (Q.T @ v)
        Kt = P(P(K).T)
        for common in (False, True):
            for rel in rels:
                lam = rel * scale
                if common:
                    alpha = P(jnp.linalg.solve(Kt + lam * eye, P(y)))
                    w = jnp.concatenate([C.T @ (p * alpha), C.T @ alpha])
                    c = jnp.linalg.lstsq(Z, y - K @ alpha)[0]
                    w = w + jnp.concatenate([jnp.full(n, c[0]), jnp.full(n, c[1])])
                else:
                    alpha = jnp.linalg.solve(K + lam * eye, y)
                    w = jnp.concatenate([C.T @ (p * alpha), C.T @ alpha])
                res.setdefault((common, rel), []).append(np.asarray(w))
    return {k: np.stack(v) for k, v in res.items()}

def rollerr(w, h):
    a, b = R.split_effects(w, "linear", n)
    pr = cv._roll_out_effects(a, b, "linear", h)
    return np.mean((pr[:, 1:] - h.losses[:, 1:]) ** 2, axis=(0, 1))

t0 = time.time()
fold_runs = np.array_split(np.arange(train.n_runs), 4)
errors = {c: {r: np.zeros(len(tests)) for r in rels} for c in (False, True)}
for f in fold_runs:
    h = train.select_runs(f)
    ws = fits(train.select_runs(np.setdiff1d(np.arange(train.n_runs), f)))
    for (c, r), w in ws.items():
        errors[c][r] += rollerr(w, h) * h.n_runs / train.n_runs
    print("fold", time.time() - t0, flush=True)
final = fits(train)
blind = train.losses.mean(0)
result = {"scale": scale, "rels": rels.tolist(), "blind": float(np.mean((blind[None, 1:] - held.losses[:, 1:]) ** 2))}
for c in (False, True):
    label = "common" if c else "centred"
    ho = {r: float(np.mean(rollerr(final[(c, r)], held))) for r in rels}
    best = cv._best(errors[c])
    result[label] = {"cv_mse": [float(np.mean(errors[c][r])) for r in rels], "heldout": [ho[r] for r in rels],
                     "cv_choice": best, "heldout_at_choice": ho[best]}
    print(label, "CV picks", best, "held-out", ho[best], "blind", result["blind"], flush=True)
    print("  cv  ", " ".join(f"{np.mean(errors[c][r]):.3g}" for r in rels))
    print("  held", " ".join(f"{ho[r]:.3g}" for r in rels), flush=True)
json.dump(result, open(out, "w"), indent=1)
print("total", time.time() - t0)
