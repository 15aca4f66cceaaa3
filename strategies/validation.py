"""Check a client's reply before fusion, so a malformed or poisoned reply never touches the shared model.

`validate_update` returns human-readable problems (empty list = valid) instead of raising, so the
coordinator can log every fault of a reply at once, drop that reply, and keep the round going
with the others.

Task rules: `expected_tasks` are the tasks the client was asked to train in this group. A client
need not return every one of them (it may hold only some), but
  * every head it returns and every example count it reports must be for an expected task,
  * a returned head needs an example count, and a positive example count needs a head,
  * its example counts must be plain non-negative ints (bool and float are rejected, since a
    float/bool count means a broken or hostile serialiser), at most `max_examples`, not all zero.
The update norm is the L2 norm of (update - reference) over every floating-point parameter of the
body and of the returned heads, i.e. of the whole reply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import torch

from strategies.fusion import ClientUpdate, State
from strategies.norms import squared_distance

_MAX_LISTED = 5  # keys named per message; long lists are truncated with a count


@dataclass(frozen=True)
class ValidationPolicy:
    """Bounds a reply must respect; `None` switches a bound off."""

    max_update_norm: float | None = None
    max_examples: int | None = None
    # An update longer than this many times the norm of the model it started from is refused:
    # no honest round of local training moves a model ten times its own size, and a scaled
    # update is how one client would otherwise take over a plain mean.
    max_relative_norm: float | None = None

    def __post_init__(self) -> None:
        if self.max_relative_norm is not None and not (math.isfinite(self.max_relative_norm) and self.max_relative_norm > 0):
            raise ValueError(f"max_relative_norm must be finite and > 0 or None, got {self.max_relative_norm!r}")
        if self.max_update_norm is not None and not (math.isfinite(self.max_update_norm) and self.max_update_norm > 0):
            raise ValueError(f"max_update_norm must be finite and > 0 or None, got {self.max_update_norm!r}")
        if self.max_examples is not None and (
            isinstance(self.max_examples, bool) or not isinstance(self.max_examples, Integral) or self.max_examples < 1
        ):
            raise ValueError(f"max_examples must be an int >= 1 or None, got {self.max_examples!r}")

    def check(
        self,
        reference_body: State,
        reference_heads: dict[str, State],
        expected_tasks: list[str],
        update: ClientUpdate,
    ) -> list[str]:
        """Validate one `ClientUpdate` against this policy's bounds."""
        problems = validate_update(
            reference_body, reference_heads, expected_tasks,
            update.body, update.heads, update.examples,
            self.max_update_norm, self.max_examples,
        )
        if self.max_relative_norm is not None and not problems:
            heads = {t: reference_heads[t] for t in update.heads}
            moved = squared_distance(reference_body, update.body) + sum(squared_distance(heads[t], h) for t, h in update.heads.items())
            zero = {k: torch.zeros_like(v) for k, v in reference_body.items()}
            size = squared_distance(zero, reference_body) + sum(
                squared_distance({k: torch.zeros_like(v) for k, v in h.items()}, h) for h in heads.values())
            if not math.sqrt(moved) <= self.max_relative_norm * max(math.sqrt(size), 1e-12):
                problems.append(f"update L2 norm {math.sqrt(moved):.6g} is more than {self.max_relative_norm:g} times "
                                f"the norm of the model it started from ({math.sqrt(size):.6g})")
        return problems


def _names(keys: set[str] | list[str]) -> str:
    ordered = sorted(keys)
    shown = ", ".join(repr(k) for k in ordered[:_MAX_LISTED])
    more = len(ordered) - _MAX_LISTED
    return shown + (f" (+{more} more)" if more > 0 else "")


def check_tensors(where: str, reference: State, update: State) -> list[str]:
    """Structural checks of one state dict: keys, types, shapes, dtypes, finiteness."""
    problems: list[str] = []
    if not isinstance(update, dict):
        return [f"{where}: expected a dict of tensors, got {type(update).__name__}"]
    missing = set(reference) - set(update)
    unexpected = set(update) - set(reference)
    if missing:
        problems.append(f"{where}: missing keys {_names(missing)}")
    if unexpected:
        problems.append(f"{where}: unexpected keys {_names(unexpected)}")
    for key, ref in reference.items():
        if key not in update:
            continue
        value = update[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{where}.{key}: expected a tensor, got {type(value).__name__}")
            continue
        if value.shape != ref.shape:
            problems.append(f"{where}.{key}: shape mismatch, expected {tuple(ref.shape)}, got {tuple(value.shape)}")
        if value.dtype != ref.dtype:
            problems.append(f"{where}.{key}: dtype mismatch, expected {ref.dtype}, got {value.dtype}")
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                problems.append(f"{where}.{key}: {bad} non-finite value(s) (NaN/Inf)")
    return problems


def check_examples(
    expected_tasks: list[str], examples: dict[str, int], max_examples: int | None
) -> list[str]:
    """Example counts drive fusion weights, so a bogus count is as harmful as bogus weights."""
    if not isinstance(examples, dict):
        return [f"examples: expected a dict of task -> int, got {type(examples).__name__}"]
    problems: list[str] = []
    expected = set(expected_tasks)
    numeric_total = 0
    for task, count in examples.items():
        if task not in expected:
            problems.append(f"examples: count for task {task!r} that was not expected (expected {_names(expected)})")
        if isinstance(count, bool) or not isinstance(count, Integral):
            problems.append(f"examples[{task!r}]: not an integer: {count!r}")
            continue
        count = int(count)
        if count < 0:
            problems.append(f"examples[{task!r}]: negative count {count}")
        elif max_examples is not None and count > max_examples:
            problems.append(f"examples[{task!r}]: {count} exceeds the maximum {max_examples}")
        else:
            numeric_total += count
    if not problems and numeric_total == 0:
        problems.append("examples: zero examples for all tasks")
    return problems


def validate_update(
    reference_body: State,
    reference_heads: dict[str, State],
    expected_tasks: list[str],
    update_body: State,
    update_heads: dict[str, State],
    examples: dict[str, int],
    max_update_norm: float | None,
    max_examples: int | None,
) -> list[str]:
    """All problems of one client reply (empty list = safe to fuse).

    `reference_*` is the model the client was sent; `expected_tasks` the tasks it was asked to
    train (each must have a reference head, else ValueError: that is a coordinator bug, not a
    client fault). The norm bound is only checked when the reply is structurally valid.
    """
    no_ref = [t for t in expected_tasks if t not in reference_heads]
    if no_ref:
        raise ValueError(f"expected tasks without a reference head: {no_ref}")
    problems = check_tensors("body", reference_body, update_body)
    if not isinstance(update_heads, dict):
        problems.append(f"heads: expected a dict of task -> state, got {type(update_heads).__name__}")
        update_heads = {}
    expected = set(expected_tasks)
    for task, head in update_heads.items():
        if task not in expected:
            problems.append(f"heads: head for task {task!r} that was not expected (expected {_names(expected)})")
            continue
        problems += check_tensors(f"heads.{task}", reference_heads[task], head)
    problems += check_examples(expected_tasks, examples, max_examples)
    if isinstance(examples, dict):
        for task in sorted(set(update_heads) - set(examples)):
            problems.append(f"heads: head for task {task!r} but no example count for it")
        for task, count in examples.items():
            if isinstance(count, Integral) and not isinstance(count, bool) and count > 0 and task not in update_heads:
                problems.append(f"examples: {int(count)} examples of task {task!r} but no head for it")
    if max_update_norm is not None and not problems:
        body_sq = squared_distance(reference_body, update_body)
        heads_sq = sum(squared_distance(reference_heads[t], h) for t, h in update_heads.items())
        norm = math.sqrt(body_sq + heads_sq)
        if not norm <= max_update_norm:
            problems.append(
                f"update L2 norm {norm:.6g} exceeds the bound {max_update_norm:.6g} "
                f"(body {math.sqrt(body_sq):.6g}, heads {math.sqrt(heads_sq):.6g})"
            )
    return problems
