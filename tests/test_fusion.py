"""ColD-Fusion math: exact means, heads fused over holders only, untouched heads kept."""

import pytest
import torch

from strategies.fusion import ClientUpdate, fuse_group, fuse_states


def _state(value: float, dtype=torch.float32):
    return {"w": torch.full((2, 3), value, dtype=dtype), "b": torch.full((3,), value, dtype=dtype)}


def test_uniform_mean_is_exact():
    fused = fuse_states([_state(1.0), _state(2.0), _state(6.0)], [1, 1, 1])
    assert torch.equal(fused["w"], torch.full((2, 3), 3.0))


def test_weighted_mean_is_exact():
    fused = fuse_states([_state(1.0), _state(4.0)], [3, 1])
    assert torch.allclose(fused["b"], torch.full((3,), 1.75), atol=0, rtol=0)


def test_dtypes_and_shapes_preserved_and_int_buffers_not_averaged():
    a = {"h": torch.ones(4, dtype=torch.float16), "n": torch.tensor(3, dtype=torch.int64), "d": torch.ones(2, 2, dtype=torch.float64)}
    b = {"h": torch.zeros(4, dtype=torch.float16), "n": torch.tensor(9, dtype=torch.int64), "d": torch.zeros(2, 2, dtype=torch.float64)}
    fused = fuse_states([a, b], [1, 1])
    assert fused["h"].dtype == torch.float16 and fused["h"].shape == (4,)
    assert fused["d"].dtype == torch.float64 and torch.equal(fused["d"], torch.full((2, 2), 0.5, dtype=torch.float64))
    assert fused["n"].dtype == torch.int64 and int(fused["n"]) == 3


def test_mismatched_keys_and_bad_weights_are_refused():
    with pytest.raises(ValueError, match="different keys"):
        fuse_states([_state(1.0), {"w": torch.zeros(2, 3)}], [1, 1])
    with pytest.raises(ValueError, match="weights"):
        fuse_states([_state(1.0), _state(2.0)], [0, 0])
    with pytest.raises(ValueError, match="weights"):
        fuse_states([_state(1.0)], [float("nan")])


def _update(node, body_value, heads, examples):
    return ClientUpdate(node, _state(body_value), {t: _state(v) for t, v in heads.items()}, examples)


def test_head_fused_only_over_its_holders_and_untrained_head_kept():
    previous = {"a": _state(100.0), "b": _state(200.0), "c": _state(300.0)}
    updates = [
        _update(1, 1.0, {"a": 10.0, "b": 20.0}, {"a": 10, "b": 30}),
        _update(2, 3.0, {"a": 30.0}, {"a": 30}),
    ]
    body, heads = fuse_group(previous, updates, weighting="uniform")
    assert torch.equal(body["w"], torch.full((2, 3), 2.0))
    assert torch.equal(heads["a"]["w"], torch.full((2, 3), 20.0))  # mean over the two holders
    assert torch.equal(heads["b"]["w"], torch.full((2, 3), 20.0))  # only client 1 trained b
    assert torch.equal(heads["c"]["w"], previous["c"]["w"])  # nobody trained c: previous head kept
    assert heads["c"]["w"] is not previous["c"]["w"]  # ...as a copy


def test_examples_weighting_weights_body_by_total_and_heads_per_task():
    previous = {"a": _state(0.0), "b": _state(0.0)}
    updates = [
        _update(1, 1.0, {"a": 1.0, "b": 5.0}, {"a": 10, "b": 30}),  # 40 examples
        _update(2, 5.0, {"a": 5.0}, {"a": 30}),  # 30 examples
    ]
    body, heads = fuse_group(previous, updates, weighting="examples")
    assert torch.allclose(body["w"], torch.full((2, 3), (1.0 * 40 + 5.0 * 30) / 70))
    assert torch.allclose(heads["a"]["w"], torch.full((2, 3), (1.0 * 10 + 5.0 * 30) / 40))
    assert torch.equal(heads["b"]["w"], torch.full((2, 3), 5.0))


def test_unknown_weighting_rejected():
    with pytest.raises(ValueError, match="weighting"):
        fuse_group({}, [_update(1, 1.0, {}, {})], weighting="median-ish")
