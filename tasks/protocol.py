"""Names shared by the coordinator and the clients for what travels in Flower messages.

Kept free of Flower imports so both sides (and tests) agree on one spelling. A message's
RecordDict holds at most: MODEL (ArrayRecord of a state dict with `body.*`/`heads.<task>.*`),
CONFIG (ConfigRecord: instructions), METRICS (MetricRecord: numbers coming back) and INFO
(ConfigRecord: what a client reports about itself).
"""

QUERY = "query"
TRAIN = "train"
EVALUATE = "evaluate"

MODEL = "model"
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


def task_key(prefix: str, task: str) -> str:
    return f"{prefix}.{task}"

# An evaluate message carries one model per task group the client holds tasks of:
# ArrayRecord "model.<gid>" and config "tasks.<gid>" (the tasks to evaluate with that model).
EVAL_GROUPS = "groups"


def group_key(prefix: str, gid: int) -> str:
    return f"{prefix}.{gid}"
