"""The names shared by every affinity module: signals, measurement methods and pair coverage kinds."""

from __future__ import annotations

# What an affinity matrix holds: TAG lookahead Z(i->j) (exact or first-order) or gradient cosine.
SIGNALS = ("lookahead", "cosine")

# How clients measure (the train message's `affinity-method`):
#   gradients    - per-task mean body gradients over the round's first steps, sketched; the
#                  coordinator computes every pair, including pairs no client holds together;
#   virtual-step - exact TAG lookahead and cosine on one client's batches (same-client pairs only);
#   both         - both of the above in the same round;
#   none         - no measurement (the coordinator sends this in rounds whose affinity nobody reads).
METHODS = ("gradients", "virtual-step", "both", "none")

# How an ordered task pair was measured in a round (history `affinity.coverage.pairs`).
SAME_CLIENT = "same-client"
CROSS_CLIENT = "cross-client"
NEVER = "never"
COVERAGE_KINDS = (SAME_CLIENT, CROSS_CLIENT, NEVER)


def measures_gradients(method: str) -> bool:
    """True when `method` asks clients for per-task gradient summaries."""
    return method in ("gradients", "both")


def measures_virtual_step(method: str) -> bool:
    """True when `method` asks clients for exact virtual-step (TAG) measurements."""
    return method in ("virtual-step", "both")


def check_method(method: str) -> str:
    """`method` itself, or ValueError naming the allowed ones."""
    if method not in METHODS:
        raise ValueError(f"affinity method {method!r} is not one of {METHODS}")
    return method
