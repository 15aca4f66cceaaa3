"""validate_update: one test per fault, each checking the message names what is wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from strategies.fusion import ClientUpdate
from strategies.validation import ValidationPolicy, validate_update

TASKS = ["a", "b"]


def reference() -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    body = {"w": torch.zeros(3, 2), "bias": torch.zeros(2), "steps": torch.tensor(0)}
    heads = {t: {"w": torch.zeros(2, 4), "b": torch.zeros(4)} for t in ["a", "b", "c"]}
    return body, heads


def good_update() -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]], dict[str, int]]:
    body, heads = reference()
    body = {k: v.clone() for k, v in body.items()}
    body["w"] += 0.1
    return body, {t: {k: v.clone() for k, v in heads[t].items()} for t in TASKS}, {"a": 10, "b": 5}


def check(body, heads, examples, max_norm=None, max_examples=None, tasks=TASKS) -> list[str]:
    ref_body, ref_heads = reference()
    return validate_update(ref_body, ref_heads, tasks, body, heads, examples, max_norm, max_examples)


def one(problems: list[str], *fragments: str) -> None:
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], problems[0]


def test_valid_update_has_no_problems() -> None:
    assert check(*good_update(), max_norm=10.0, max_examples=100) == []


def test_client_may_return_a_subset_of_expected_tasks() -> None:
    body, heads, _ = good_update()
    assert check(body, {"a": heads["a"]}, {"a": 3, "b": 0}) == []


def test_missing_and_unexpected_body_keys_are_named() -> None:
    body, heads, ex = good_update()
    del body["bias"]
    body["extra"] = torch.zeros(1)
    problems = check(body, heads, ex)
    assert any("missing" in p and "'bias'" in p for p in problems), problems
    assert any("unexpected" in p and "'extra'" in p for p in problems), problems


def test_missing_head_key() -> None:
    body, heads, ex = good_update()
    del heads["b"]["b"]
    one(check(body, heads, ex), "heads.b", "missing", "'b'")


def test_shape_mismatch_names_key_expected_and_got() -> None:
    body, heads, ex = good_update()
    body["w"] = torch.zeros(2, 3)
    one(check(body, heads, ex), "body.w", "shape", "(3, 2)", "(2, 3)")


def test_dtype_mismatch() -> None:
    body, heads, ex = good_update()
    heads["a"]["b"] = torch.zeros(4, dtype=torch.float64)
    one(check(body, heads, ex), "heads.a.b", "dtype", "torch.float32", "torch.float64")


def test_non_tensor_value() -> None:
    body, heads, ex = good_update()
    body["bias"] = np.zeros(2, dtype=np.float32)
    one(check(body, heads, ex), "body.bias", "expected a tensor", "ndarray")


def test_non_finite_values_counted() -> None:
    body, heads, ex = good_update()
    body["w"][0, 0] = float("nan")
    body["w"][1, 1] = float("inf")
    one(check(body, heads, ex, max_norm=1.0), "body.w", "2 non-finite")


def test_update_norm_above_bound_reports_norm_and_bound() -> None:
    body, heads, ex = good_update()
    body["w"] = torch.full((3, 2), 2.0)  # body norm sqrt(6 * 4)
    heads["a"]["b"] = torch.full((4,), 1.0)  # head norm 2
    norm = math.sqrt(24 + 4)
    one(check(body, heads, ex, max_norm=5.0), "update L2 norm", f"{norm:.6g}", "bound 5")
    assert check(body, heads, ex, max_norm=5.3) == []  # 5.29 <= 5.3: heads are included, but within


def test_norm_ignores_integer_buffers() -> None:
    body, heads, ex = good_update()
    body["steps"] = torch.tensor(10**6)
    assert check(body, heads, ex, max_norm=1.0) == []


def test_unexpected_head_task() -> None:
    body, heads, ex = good_update()
    heads["c"] = reference()[1]["c"]
    ex["c"] = 1
    problems = check(body, heads, ex)
    assert any("head for task 'c'" in p and "not expected" in p for p in problems), problems
    assert any("examples" in p and "'c'" in p and "not expected" in p for p in problems), problems


def test_head_without_count_and_count_without_head() -> None:
    body, heads, _ = good_update()
    one(check(body, heads, {"a": 3}), "head for task 'b'", "no example count")
    one(check(body, {"a": heads["a"]}, {"a": 3, "b": 4}), "4 examples of task 'b'", "no head")


@pytest.mark.parametrize(
    "examples, fragment",
    [
        ({"a": -1, "b": 5}, "negative"),
        ({"a": 0, "b": 0}, "zero examples for all tasks"),
        ({}, "zero examples for all tasks"),
        ({"a": 2.5, "b": 5}, "not an integer"),
        ({"a": 3.0, "b": 5}, "not an integer"),
        ({"a": True, "b": 5}, "not an integer"),
        ({"a": 10_001, "b": 5}, "exceeds the maximum 10000"),
    ],
)
def test_bad_example_counts(examples: dict, fragment: str) -> None:
    body, heads, _ = good_update()
    if not any(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in examples.values()):
        heads = {}
    problems = check(body, heads, examples, max_examples=10_000)
    assert any(fragment in p for p in problems), problems


def test_numpy_integer_counts_are_accepted() -> None:
    body, heads, _ = good_update()
    assert check(body, heads, {"a": np.int64(3), "b": 1}) == []


def test_expected_task_without_reference_head_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="without a reference head"):
        check(*good_update(), tasks=["a", "zzz"])


def test_many_missing_keys_are_truncated() -> None:
    ref_body = {f"k{i}": torch.zeros(1) for i in range(20)}
    problems = validate_update(ref_body, {}, [], {}, {}, {}, None, None)
    assert any("(+15 more)" in p for p in problems), problems


def test_policy_checks_client_update_and_validates_bounds() -> None:
    body, heads, ex = good_update()
    ref_body, ref_heads = reference()
    update = ClientUpdate(node_id=7, body=body, heads=heads, examples=ex)
    assert ValidationPolicy(max_update_norm=10.0, max_examples=100).check(ref_body, ref_heads, TASKS, update) == []
    one(ValidationPolicy(max_examples=9).check(ref_body, ref_heads, TASKS, update), "exceeds the maximum 9")
    with pytest.raises(ValueError):
        ValidationPolicy(max_update_norm=0.0)
    with pytest.raises(ValueError):
        ValidationPolicy(max_examples=0)
