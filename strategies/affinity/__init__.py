"""Inter-task affinity: how training one task moves another, measured on the SHARED body.

One job per module:
  names       signal / method / coverage names shared by everything below
  bodygrad    per-task loss and body gradient of a MultiTaskModel (exact, on one client)
  lookahead   exact TAG lookahead Z(i->j) = 1 - L_j(theta - lr g_i) / L_j(theta) (virtual step)
  cosine      gradient cosine cos(g_i, g_j)
  stats       AffinityStats: exact (sum, count) per ordered pair, merged across steps/clients
  tracker     AffinityTracker: per-pair estimate across rounds (mean, window, EMA)
  sketch      count sketch of a flat body gradient, hashed in chunks (no d x P matrix)
  summaries   client side: accumulate per-task body gradients over a round's first steps
  reports     GradientReport: one client's per-task gradient summaries, and their wire form
  validation  reject forged or broken affinity reports (gradient summaries and virtual-step stats)
  pooling     combine clients per task: weighted mean or a robust option; robust stats combination
  firstorder  every pair from pooled gradients: cosine and first-order lookahead lr g_i.g_j / L_j
  coverage    per pair: measured same-client, cross-client or never, from how many measurements
  rounds      one round's reports -> matrices + coverage the tracker and grouping consume

Matrix convention everywhere: row = source task i, column = target task j, entry Z(i->j).
No Flower import anywhere in this package.
"""

from strategies.affinity.bodygrad import Batch, LossFn
from strategies.affinity.cosine import cosine_matrix, gradient_cosine
from strategies.affinity.lookahead import lookahead_affinity, measure_affinity, measure_both
from strategies.affinity.names import COVERAGE_KINDS, CROSS_CLIENT, METHODS, NEVER, SAME_CLIENT, SIGNALS
from strategies.affinity.stats import AffinityStats
from strategies.affinity.tracker import TRACKER_MODES, AffinityTracker

__all__ = [
    "AffinityStats", "AffinityTracker", "Batch", "COVERAGE_KINDS", "CROSS_CLIENT", "LossFn", "METHODS", "NEVER",
    "SAME_CLIENT", "SIGNALS", "TRACKER_MODES", "cosine_matrix", "gradient_cosine", "lookahead_affinity",
    "measure_affinity", "measure_both",
]
