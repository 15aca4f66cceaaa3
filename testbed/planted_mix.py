"""Planted suites with chosen knobs, named so the coordinator and every client can load them.

A run names its suite by a string (`suite` in the run config) that both sides pass to
`tasks.registry.load_suite`, so a suite with non-default knobs needs a name that carries them.
`suite_name(num_groups=4, variation=0.6, ...)` returns such a name,
`"testbed.planted_mix:planted__num_groups-4__variation-0p6"`; this module's `__getattr__`
turns the part after the colon back into a zero-argument factory of
`tasks.planted.make_planted_suite(**knobs)`. Floats are written with `p` for the point and `m`
for a minus sign, so names stay file-name safe. Used by the benchmarks (grouping recovery on
task mixes nobody tuned for) and usable by anyone: `fedmtl simulate --suite
testbed.planted_mix:planted__tasks_per_client-1`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from tasks.planted import make_planted_suite
from tasks.suite import Suite

PREFIX = "planted"
KNOBS = {name: p.default for name, p in inspect.signature(make_planted_suite).parameters.items()}


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list)):
        return "x".join(_encode(v) for v in value)
    return str(value).replace("-", "m").replace(".", "p")


def _decode(name: str, text: str) -> Any:
    default = KNOBS[name]
    if isinstance(default, bool):
        return text == "1"
    if "x" in text:  # a per-group size list
        return tuple(int(t) for t in text.split("x"))
    plain = text.replace("m", "-").replace("p", ".")
    if isinstance(default, float):
        return float(plain)
    return int(plain)


def suite_name(**knobs: Any) -> str:
    """The suite name for `make_planted_suite(**knobs)` (unknown knobs are refused)."""
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ValueError(f"make_planted_suite has no knobs {unknown}; it has {sorted(KNOBS)}")
    parts = [PREFIX] + [f"{k}-{_encode(v)}" for k, v in sorted(knobs.items())]
    return f"{__name__}:{'__'.join(parts)}"


def knobs_of(attr: str) -> dict[str, Any]:
    """The knobs a factory name stands for (the inverse of `suite_name`)."""
    head, *parts = attr.split("__")
    if head != PREFIX:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    knobs = {}
    for part in parts:
        key, sep, text = part.partition("-")
        if not sep or key not in KNOBS:
            raise AttributeError(f"{attr!r}: {part!r} is not <knob>-<value> for a knob of make_planted_suite")
        knobs[key] = _decode(key, text)
    return knobs


def __getattr__(attr: str) -> Callable[[], Suite]:
    knobs = knobs_of(attr)

    def factory() -> Suite:
        return make_planted_suite(**knobs)

    factory.__name__ = attr
    return factory
