"""Robust reducers and update clipping: exact values, outlier resistance, fuse_states compatibility."""

from __future__ import annotations

import math

import pytest
import torch

from strategies.fusion import ClientUpdate, fuse_group, fuse_states, weighted_mean
from strategies.robust import (
    REDUCERS,
    clip_update,
    clip_updates,
    coordinate_median,
    make_reducer,
    trim_count,
    trimmed_mean,
    unweighted_median,
    update_norm,
)


def f64(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def ones(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.float64)


def test_median_odd_and_even_counts_exact() -> None:
    stacked = f64([3.0, -1.0], [1.0, 5.0], [2.0, 0.0])
    assert torch.equal(coordinate_median(stacked, ones(3)), torch.tensor([2.0, 0.0], dtype=torch.float64))
    stacked = f64([4.0], [1.0], [3.0], [2.0])
    assert torch.equal(coordinate_median(stacked, ones(4)), torch.tensor([2.5], dtype=torch.float64))


def test_weighted_median_follows_weight_mass() -> None:
    stacked = f64([1.0], [2.0], [10.0])
    # client with value 10 holds more than half the weight
    assert coordinate_median(stacked, torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64)).item() == 10.0
    # exactly half at value 2 -> mean of 2 and the next value, 10
    assert coordinate_median(stacked, torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)).item() == 6.0
    # weights ignored by the unweighted variant
    assert unweighted_median(stacked, torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64)).item() == 2.0


def test_zero_weight_clients_do_not_vote() -> None:
    stacked = f64([1.0], [100.0], [3.0])
    w = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    assert coordinate_median(stacked, w).item() == 2.0
    assert trimmed_mean(stacked, w, 0.0).item() == 2.0


def test_median_single_client_and_multidim_shape() -> None:
    x = torch.arange(6, dtype=torch.float64).reshape(1, 2, 3)
    assert torch.equal(coordinate_median(x, ones(1)), x[0])
    stacked = torch.stack([x[0], x[0] + 1, x[0] + 2])
    assert torch.equal(coordinate_median(stacked, ones(3)), x[0] + 1)


def test_trimmed_mean_exact() -> None:
    stacked = f64([1.0], [2.0], [3.0], [4.0], [100.0])
    # k = floor(0.2 * 5) = 1: drop 1 and 100 -> mean(2, 3, 4)
    assert trimmed_mean(stacked, ones(5), 0.2).item() == 3.0
    # k = 0: plain mean
    assert trimmed_mean(stacked, ones(5), 0.1).item() == pytest.approx(22.0)
    # weighted mean of the survivors 2, 3, 4 with weights 1, 1, 2
    w = torch.tensor([5.0, 1.0, 1.0, 2.0, 5.0], dtype=torch.float64)
    assert trimmed_mean(stacked, w, 0.2).item() == pytest.approx((2 + 3 + 8) / 4)


def test_trimmed_mean_per_coordinate_trimming() -> None:
    stacked = f64([1.0, 50.0], [2.0, 1.0], [90.0, 2.0])
    assert torch.equal(trimmed_mean(stacked, ones(3), 0.34), torch.tensor([2.0, 2.0], dtype=torch.float64))


def test_trim_count_is_robust_to_float_noise() -> None:
    assert trim_count(100, 0.29) == 29
    assert trim_count(10, 0.2) == 2
    assert trim_count(3, 0.34) == 1


def test_trimmed_mean_errors_when_nothing_remains() -> None:
    with pytest.raises(ValueError, match="nothing would remain"):
        trimmed_mean(f64([1.0], [2.0]), ones(2), 0.5)
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(f64([1.0]), ones(1), 1.0)


def _clients_with_outliers(seed: int = 0) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    center = torch.randn(4, 3, generator=g)
    states = [{"w": center + 0.01 * torch.randn(4, 3, generator=g)} for _ in range(10)]
    for s in states[:2]:
        s["w"] = s["w"] * 100 + 50
    return states, center


@pytest.mark.parametrize("name, opts", [("median", {}), ("median", {"weighted": False}), ("trimmed-mean", {"trim_fraction": 0.2})])
def test_robust_reducers_resist_two_of_ten_outliers(name: str, opts: dict) -> None:
    states, center = _clients_with_outliers()
    robust = fuse_states(states, [1.0] * 10, make_reducer(name, **opts))["w"]
    mean = fuse_states(states, [1.0] * 10, weighted_mean)["w"]
    assert (robust - center).abs().max() < 0.05
    assert (mean - center).abs().max() > 5


def test_dtype_and_shape_preserved_through_fuse_states() -> None:
    states = [
        {
            "a": torch.full((2, 3), float(i), dtype=torch.float32),
            "b": torch.full((4,), float(i), dtype=torch.bfloat16),
            "n": torch.tensor(i, dtype=torch.int64),
        }
        for i in range(5)
    ]
    for name in REDUCERS:
        out = fuse_states(states, [1.0] * 5, make_reducer(name))
        assert out["a"].dtype == torch.float32 and out["a"].shape == (2, 3)
        assert out["b"].dtype == torch.bfloat16 and out["b"].shape == (4,)
        assert out["n"].dtype == torch.int64 and out["n"].item() == 0
        assert torch.equal(out["a"], torch.full((2, 3), 2.0))


def test_reducer_plugs_into_fuse_group() -> None:
    updates = [
        ClientUpdate(node_id=i, body={"w": torch.tensor([float(i)])}, heads={"t": {"b": torch.tensor([float(i)])}}, examples={"t": 1})
        for i in (1, 2, 1000)
    ]
    body, heads = fuse_group({"t": {"b": torch.zeros(1)}, "u": {"b": torch.ones(1)}}, updates, "examples", make_reducer("median"))
    assert body["w"].item() == 2.0 and heads["t"]["b"].item() == 2.0 and heads["u"]["b"].item() == 1.0


def test_make_reducer_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ValueError, match="valid reducers: mean, median, trimmed-mean"):
        make_reducer("krum")
    with pytest.raises(ValueError, match="unknown option"):
        make_reducer("mean", trim_fraction=0.1)
    with pytest.raises(ValueError, match="trim_fraction"):
        make_reducer("trimmed-mean", trim_fraction=-0.1)
    assert make_reducer("mean") is weighted_mean


def test_clip_math_exact() -> None:
    ref = {"w": torch.zeros(2, dtype=torch.float64), "n": torch.tensor(7)}
    big = {"w": torch.tensor([3.0, 4.0], dtype=torch.float64), "n": torch.tensor(9)}  # |delta| = 5
    small = {"w": torch.tensor([0.3, 0.4], dtype=torch.float64), "n": torch.tensor(9)}
    out_big, out_small = clip_updates(ref, [big, small], max_norm=1.0)
    assert torch.allclose(out_big["w"], torch.tensor([0.6, 0.8], dtype=torch.float64), rtol=0, atol=1e-15)
    assert out_big["n"].item() == 9  # integer buffers pass through
    assert out_small["w"] is small["w"]  # within the bound: untouched
    assert update_norm(ref, out_big) == pytest.approx(1.0, abs=1e-12)


def test_clip_norm_spans_all_float_params_and_keeps_dtype() -> None:
    ref = {"a": torch.ones(3), "b": torch.ones(1, dtype=torch.float64)}
    state = {"a": torch.ones(3) + torch.tensor([2.0, 0.0, 0.0]), "b": torch.tensor([-1.0], dtype=torch.float64)}
    assert update_norm(ref, state) == pytest.approx(math.sqrt(8))
    out = clip_update(ref, state, math.sqrt(2))  # halve the delta
    assert out["a"].dtype == torch.float32 and out["b"].dtype == torch.float64
    assert torch.allclose(out["a"], torch.tensor([2.0, 1.0, 1.0]))
    assert torch.allclose(out["b"], torch.tensor([0.0], dtype=torch.float64))


def test_clip_rejects_bad_inputs() -> None:
    ref = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="max_norm"):
        clip_update(ref, {"w": torch.ones(2)}, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        clip_update(ref, {"w": torch.tensor([float("nan"), 0.0])}, 1.0)
    with pytest.raises(ValueError, match="keys differ"):
        clip_update(ref, {"v": torch.ones(2)}, 1.0)
    with pytest.raises(ValueError, match="shape"):
        clip_update(ref, {"w": torch.ones(3)}, 1.0)
