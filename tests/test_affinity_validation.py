"""Hostile affinity reports are rejected with a reason; honest ones pass."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.affinity import (
    AffinityStats,
    GradientReport,
    max_virtual_measurements,
    validate_affinity_stats,
    validate_gradient_report,
)
from testbed.hostile_affinity import forge_gradient_report, forge_virtual_stats

TASKS = ["a", "b", "c", "d"]
DIM = 16


def _honest(seed: int = 0, tasks=("a", "b")) -> GradientReport:
    rng = np.random.default_rng(seed)
    return GradientReport(
        client="c0",
        grads={t: rng.standard_normal(DIM).astype(np.float32) for t in tasks},
        steps={t: 10 for t in tasks}, examples={t: 320 for t in tasks}, losses={t: 1.2 for t in tasks}, seed=99,
    )


def _check(rep: GradientReport) -> list[str]:
    return validate_gradient_report(rep, ["a", "b"], max_steps=10, dim=DIM, batch_size=32, expected_seed=99)


def test_honest_report_passes_and_survives_the_wire() -> None:
    rep = _honest()
    assert _check(rep) == []
    arrays, metrics = rep.to_wire()
    assert set(arrays) == {"grad.a", "grad.b"} and metrics["affinity-steps.a"] == 10
    back = GradientReport.from_wire(arrays, metrics | {"train-seconds": 1.0, "loss.a": 0.3}, client="c0")
    assert _check(back) == [] and back.steps == rep.steps
    np.testing.assert_array_equal(back.grads["a"], rep.grads["a"])


@pytest.mark.parametrize("kind, needle", [
    ("nan", "non-finite"), ("huge", "norm"), ("foreign", "does not train"), ("counts", "accumulated steps"),
    ("dim", "shape"), ("seed", "sketch seed"),
])
def test_forged_gradient_reports_are_rejected(kind: str, needle: str) -> None:
    problems = _check(forge_gradient_report(kind, _honest(), TASKS))
    assert problems and any(needle in p for p in problems), problems


def test_other_bad_values_are_rejected() -> None:
    rep = _honest()
    rep.losses["a"] = float("inf")
    rep.examples["b"] = 10_000  # more than 10 steps x 32
    problems = _check(rep)
    assert any("mean loss" in p for p in problems) and any("examples" in p for p in problems)
    rep = _honest()
    rep.steps["a"] = True  # a bool is not a count
    rep.grads["b"] = rep.grads["b"].astype(np.int32)
    problems = _check(rep)
    assert any("steps" in p for p in problems) and any("dtype" in p for p in problems)


def test_malformed_wire_records_raise() -> None:
    arrays, metrics = _honest().to_wire()
    with pytest.raises(ValueError, match="lacks metric"):
        GradientReport.from_wire(arrays, {k: v for k, v in metrics.items() if k != "affinity-loss.a"})
    with pytest.raises(ValueError, match="not named"):
        GradientReport.from_wire({"weird": arrays["grad.a"]}, metrics)
    with pytest.raises(ValueError, match="type"):
        GradientReport.from_wire(arrays, metrics | {"affinity-steps.a": 2.5})
    stray = GradientReport.from_wire({"grad.a": arrays["grad.a"]}, metrics)  # metrics of b, no summary
    assert any("without a summary" in p for p in _check(stray))


def _stats(tasks=("a", "b")) -> dict[str, AffinityStats]:
    z = np.array([[0.02, 0.01], [-0.01, 0.03]])
    c = np.array([[1.0, 0.2], [0.2, 1.0]])
    return {"lookahead": AffinityStats(list(tasks)).add(z).add(z), "cosine": AffinityStats(list(tasks)).add(c).add(c)}


def test_virtual_step_stats_honest_pass_and_forgeries_fail() -> None:
    assert max_virtual_measurements(30, 5) == 6 and max_virtual_measurements(31, 5) == 7 and max_virtual_measurements(3, 0) == 0
    for signal, s in _stats().items():
        assert validate_affinity_stats(s, ["a", "b"], max_count=6, signal=signal) == []
    for kind, needle in (("virtual-nan", "finite"), ("virtual-range", "outside"), ("virtual-counts", "counts"),
                         ("virtual-foreign", "does not train")):
        forged = forge_virtual_stats(kind, _stats(), TASKS, max_count=6)
        problems = [p for s, st in forged.items() for p in validate_affinity_stats(st, ["a", "b"], 6, s)]
        assert any(needle in p for p in problems), (kind, problems)
    # steering inside the sane range passes validation: robust pooling must outvote it
    steer = forge_virtual_stats("virtual-steer", _stats(), TASKS, max_count=6)
    assert all(validate_affinity_stats(st, ["a", "b"], 6, s) == [] for s, st in steer.items())
    assert validate_affinity_stats(_stats()["cosine"], ["a", "b"], 6, "nope") == ["unknown affinity signal 'nope'"]
    bad = AffinityStats(["a", "b"], sums=np.array([[0.0, 0.5], [0.0, 0.0]]))
    assert any("never measured" in p for p in validate_affinity_stats(bad, ["a", "b"], 6, "lookahead"))
