"""Every task pair from pooled per-task gradients: gradient cosine and first-order lookahead.

First-order view of TAG's lookahead: L_j(theta - lr g_i) ~ L_j(theta) - lr g_i.g_j, so

    Z(i->j) ~ lr * (g_i . g_j) / L_j        (same units as the exact virtual-step Z)

with g_i, g_j the body gradients of tasks i and j at the SAME model and L_j task j's loss
there. Clients holding different tasks all start the round from the same model, so their mean
gradients over the round's first steps can be paired even though no client holds both tasks.
Its sign is the gradient cosine's sign; the 1/L_j scale is what TAG's ratio has. Dot products
of count sketches are unbiased for the true ones (`sketch`), and the pooled means of
independent clients have independent noise, so off-diagonal entries are unbiased up to the
curvature term the first-order view drops. The diagonal carries the noise |noise|^2 and is
ignored by grouping. benchmarks/bench_affinity.py reports its correlation with the exact one.
"""

from __future__ import annotations

import numpy as np

from strategies.affinity.cosine import cosine_matrix
from strategies.affinity.lookahead import MIN_BASE_LOSS
from strategies.affinity.pooling import PooledGradients


def first_order_lookahead(vectors: np.ndarray, losses: np.ndarray, lr: float) -> np.ndarray:
    """Z[i, j] = lr * v_i.v_j / L_j; NaN where a task has no vector or L_j is (near) zero."""
    v = np.asarray(vectors, np.float64)
    loss = np.asarray(losses, np.float64)
    gram = v @ v.T
    ok = np.isfinite(loss) & (loss > MIN_BASE_LOSS)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = lr * gram / np.where(ok, loss, 1.0)[None, :]
    z[:, ~ok] = np.nan
    return z


def gradient_affinity(pooled: PooledGradients, lr: float) -> dict[str, np.ndarray]:
    """{"lookahead": first-order Z, "cosine": C} for every pair of `pooled.tasks` (NaN rows/columns
    for tasks nobody reported)."""
    v = np.where(np.isfinite(pooled.vectors), pooled.vectors, 0.0)
    missing = ~pooled.measured()
    z = first_order_lookahead(v, pooled.losses, lr)
    c = cosine_matrix(v) if v.shape[1] else np.full((len(pooled.tasks),) * 2, np.nan)
    for m in (z, c):
        m[missing, :] = np.nan
        m[:, missing] = np.nan
    return {"lookahead": z, "cosine": c}
