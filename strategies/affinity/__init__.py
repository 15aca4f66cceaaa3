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
from strategies.affinity.coverage import PairCoverage, gradient_coverage, virtual_step_coverage
from strategies.affinity.firstorder import first_order_lookahead, gradient_affinity
from strategies.affinity.lookahead import lookahead_affinity, measure_affinity, measure_both
from strategies.affinity.names import (
    COVERAGE_KINDS, CROSS_CLIENT, METHODS, NEVER, SAME_CLIENT, SIGNALS, check_method, measures_gradients,
    measures_virtual_step,
)
from strategies.affinity.pooling import (
    POOLINGS, CombinedStats, PooledGradients, combine_virtual_stats, pool_gradients, pool_virtual_signals,
)
from strategies.affinity.reports import GradientReport, has_gradient_report
from strategies.affinity.rounds import RoundAffinity, round_affinity
from strategies.affinity.sketch import CountSketch, sketch_dim, sketch_seed
from strategies.affinity.stats import AffinityStats
from strategies.affinity.summaries import TaskGradients, body_num_params, window_steps
from strategies.affinity.tracker import TRACKER_MODES, AffinityTracker
from strategies.affinity.validation import max_virtual_measurements, validate_affinity_stats, validate_gradient_report

__all__ = [
    "AffinityStats", "AffinityTracker", "Batch", "COVERAGE_KINDS", "CROSS_CLIENT", "CombinedStats", "CountSketch",
    "GradientReport", "LossFn", "METHODS", "NEVER", "POOLINGS", "PairCoverage", "PooledGradients", "RoundAffinity",
    "SAME_CLIENT", "SIGNALS", "TRACKER_MODES", "TaskGradients", "body_num_params", "check_method",
    "combine_virtual_stats", "cosine_matrix", "first_order_lookahead", "gradient_affinity", "gradient_coverage",
    "gradient_cosine", "has_gradient_report", "lookahead_affinity", "max_virtual_measurements", "measure_affinity",
    "measure_both", "measures_gradients", "measures_virtual_step", "pool_gradients", "pool_virtual_signals",
    "round_affinity", "sketch_dim", "sketch_seed", "validate_affinity_stats", "validate_gradient_report",
    "virtual_step_coverage", "window_steps",
]
