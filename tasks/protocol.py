"""Names shared by the coordinator and the clients for what travels in Flower messages.

Kept free of Flower imports so both sides (and tests) agree on one spelling. A message's
RecordDict holds at most: MODEL (ArrayRecord: a state dict with `body.*`/`heads.<task>.*` keys,
*packed*: one flat array per dtype, see `tasks.packing`), CONFIG (ConfigRecord: instructions,
and the layout of the MODEL it sends: names, dtypes and shapes under LAYOUT + ".names", ...),
METRICS (MetricRecord: numbers coming back) and INFO (ConfigRecord: what a client reports about
itself). A train reply's MODEL is packed in the order of the model it was sent and carries no
layout: the coordinator knows it (a reply MAY carry it as a LAYOUT ConfigRecord, which must then
match). Each record is one more object, so one more request on every hop.
"""

QUERY = "query"
TRAIN = "train"
EVALUATE = "evaluate"

MODEL = "model"
LAYOUT = "layout"  # prefix of the sent MODEL's layout entries in CONFIG (tasks.packing.layout_entries)
CONFIG = "config"
METRICS = "metrics"
INFO = "info"

# Per-task metric keys are "<prefix>.<task>".
EXAMPLES = "examples"
LOSS = "loss"
ACCURACY = "accuracy"
TRAIN_SECONDS = "train-seconds"
AFFINITY_SECONDS = "affinity-seconds"
STEPS = "steps"
EVAL_SECONDS = "eval-seconds"  # evaluate reply METRICS (and the EVALUATION record): scoring time


def task_key(prefix: str, task: str) -> str:
    return f"{prefix}.{task}"

# An evaluate message carries one model per task group the client holds tasks of:
# ArrayRecord "model.<gid>", its layout under "layout.<gid>" in CONFIG, and config "tasks.<gid>"
# (the tasks to evaluate with that model).
EVAL_GROUPS = "groups"

# Evaluation that travels with training (run-config `evaluate-in-train`): a train message whose
# config has EVALUATE_FIRST = True asks the client to score the model it received, on its test
# split of the tasks it trains, before training it; the train reply then carries those scores in
# the MetricRecord EVALUATION ("accuracy.<task>", "loss.<task>", "examples.<task>", as an
# evaluate reply's METRICS). One message a round instead of two.
EVALUATE_FIRST = "evaluate-first"
EVALUATION = "evaluation"


def group_key(prefix: str, gid: int) -> str:
    return f"{prefix}.{gid}"


# --- affinity measurement -----------------------------------------------------------------
# Train message config keys (ConfigRecord CONFIG) that tell a client what to measure this round.
# The client measures exactly when asked (method != "none"); the coordinator decides the rounds.
CFG_AFFINITY_METHOD = "affinity-method"  # "gradients" | "virtual-step" | "both" | "none"
CFG_AFFINITY_STEPS = "affinity-steps"  # gradients: accumulate over the round's first N steps
CFG_AFFINITY_SKETCH_DIM = "affinity-sketch-dim"  # gradients: sketch size d (exact gradient if P <= d)
CFG_AFFINITY_SKETCH_SEED = "affinity-sketch-seed"  # gradients: this round's sketch seed (same for all clients)
CFG_AFFINITY_EVERY = "affinity-every"  # virtual-step: measure every k-th step
CFG_AFFINITY_BATCH_SIZE = "affinity-batch-size"  # virtual-step: probe batch size (0 = training batch)
# A train message with MEASURE_ONLY = True is a probe (run-config `affinity-coverage = "probe"`):
# the client takes its gradient summaries at the model it was sent, over the same window of steps
# a training client accumulates, and takes no optimizer step. Its reply carries METRICS and the
# AFFINITY record only, never a MODEL: a probe adds a task to the round's affinity, not to fusion.
MEASURE_ONLY = "measure-only"

# Train reply: per-task gradient summaries travel in their own ArrayRecord AFFINITY, one float32
# 1-D array "grad.<task>" of length min(P, d) per measured task; their bookkeeping in METRICS:
AFFINITY = "affinity"
AFFINITY_GRAD = "grad"  # array key "grad.<task>"
AFFINITY_STEPS = "affinity-steps"  # metric "affinity-steps.<task>": steps accumulated (int)
AFFINITY_EXAMPLES = "affinity-examples"  # metric "affinity-examples.<task>": examples accumulated (int)
AFFINITY_LOSS = "affinity-loss"  # metric "affinity-loss.<task>": mean loss over those steps (float)
AFFINITY_SEED = "affinity-sketch-seed"  # metric: the sketch seed the client used (echo, int)
# Virtual-step sums/counts stay in METRICS as "<signal>.sum.<ti>.<tj>" / "<signal>.count.<ti>.<tj>"
# (strategies.affinity.AffinityStats.to_metrics(prefix=signal)).
