"""Every reply from a client is untrusted input: read it here, check it, and never raise.

`read_query`, `read_train`, `read_probe` and `read_evaluate` each take a Flower reply and the `Sent` record of
the message it answers (matched by Flower's reply-to id, see `coordinator.messaging`), and
return either the decoded result or a `Refused` naming every problem. Nothing a client writes
decides which group a reply belongs to, how many examples it weighs, or how much memory it
costs: records, keys, a packed model's layout (`tasks.packing`), dtypes, shapes and byte sizes
are checked against what was asked *before* any array is decoded, counts are bounded by what
the client declared when it joined (itself bounded by `max-examples`), and the update itself
goes through `strategies.validation`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SType
from numpy.lib import format as npy_format

from coordinator.affinity_ask import NOTHING, AffinityAsk
from coordinator.messaging import Sent
from coordinator.state import ClientInfo, TaskGroup
from strategies.affinity import (
    SIGNALS, AffinityStats, GradientReport, has_gradient_report, max_virtual_measurements, validate_affinity_stats,
    validate_gradient_report, window_steps,
)
from strategies.fusion import ClientUpdate
from strategies.validation import ValidationPolicy
from tasks import protocol as P
from tasks.models import split_state
from tasks.packing import Layout, unpack

NPY_HEADER_SLACK = 4096  # bytes an .npy header may add to an array's raw size
MAX_ENTRIES = 4096  # metrics (or listed tasks) one reply may carry
MAX_TEXT = 200  # characters of a client-chosen string kept in logs and history


@dataclass
class Refused:
    """Why a reply was not used (every problem found, in order)."""

    reasons: list[str]


@dataclass
class TrainReply:
    """A train reply decoded into fusion inputs plus the client's bookkeeping."""

    update: ClientUpdate
    losses: dict[str, float]
    train_seconds: float
    affinity_seconds: float
    steps: int
    affinity: dict[str, AffinityStats] = field(default_factory=dict)  # virtual-step stats per signal
    gradients: GradientReport | None = None  # per-task body-gradient summaries
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # the received model's test scores, if asked


def short(text: object) -> str:
    """A client-chosen string, cut to a length fit for logs."""
    s = str(text)
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + "..."


# ----------------------------------------------------------------------------- shared checks


def _check_origin(reply: Message, sent: Sent) -> list[str]:
    src = reply.metadata.src_node_id
    return [] if src == sent.node else [f"reply comes from node {src}, the message went to node {sent.node}"]


def _records(reply: Message, allowed: dict[str, type], required: set[str]) -> tuple[dict, list[str]]:
    """The reply's records by name, if their names and types are the expected ones."""
    content = reply.content
    names = list(content.keys())
    problems = [f"unexpected record {short(n)!r}" for n in names if n not in allowed][:5]
    problems += [f"missing record {n!r}" for n in sorted(required) if n not in names]
    records = {}
    for name in names:
        if name in allowed:
            record = content[name]
            if not isinstance(record, allowed[name]):
                problems.append(f"record {name!r} is a {type(record).__name__}, expected {allowed[name].__name__}")
            else:
                records[name] = record
    return records, problems


def _is_count(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and int(value) >= 0


def _finite(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _read_npy(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode .npy bytes whose header says exactly `dtype` and `shape` (C order) and whose payload
    is exactly that long; ValueError otherwise. Unlike `np.load`, nothing is allocated from what
    the header claims before it has been checked against what was expected."""
    f = io.BytesIO(data)
    try:
        version = npy_format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy format version {version} not accepted")
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        got_shape, fortran, got_dtype = read(f)
    except Exception as exc:  # noqa: BLE001 - whatever numpy's header parser raises on garbage
        raise ValueError(f"unreadable npy header ({type(exc).__name__}: {short(exc)})") from None
    if str(got_dtype) != dtype or tuple(got_shape) != tuple(shape) or fortran:
        raise ValueError(f"npy header says {short(got_dtype)} {tuple(got_shape)[:8]}"
                         f"{' (Fortran order)' if fortran else ''}, expected {dtype} {tuple(shape)}")
    count = math.prod(shape)
    payload = len(data) - f.tell()
    if payload != count * got_dtype.itemsize:
        raise ValueError(f"npy payload is {payload} bytes, {dtype} {tuple(shape)} needs {count * got_dtype.itemsize}")
    return np.frombuffer(data, dtype=got_dtype, count=count, offset=f.tell()).reshape(shape).copy()


def _check_array(array: Array, where: str, dtype: str, shape: tuple[int, ...], why: str = "") -> list[str]:
    """A Flower Array's metadata (not its payload) against the dtype and shape expected of it."""
    problems = []
    if array.stype != SType.NUMPY:
        problems.append(f"{where}: serialisation {short(array.stype)!r}, expected {SType.NUMPY!r}")
    if str(array.dtype) != dtype:
        problems.append(f"{where}: dtype {short(array.dtype)}, expected {dtype}")
    if tuple(array.shape) != tuple(shape):
        problems.append(f"{where}: shape {tuple(array.shape)[:8]}, expected {tuple(shape)}{why}")
    limit = math.prod(shape) * np.dtype(dtype).itemsize + NPY_HEADER_SLACK
    if len(array.data) > limit:
        problems.append(f"{where}: {len(array.data)} bytes, more than the {limit} its shape needs")
    return problems


def _decode_state(record: ArrayRecord, expected: dict[str, torch.Tensor], where: str) -> tuple[dict, list[str]]:
    """Decode an unpacked ArrayRecord (one Array per key: the gradient summaries) whose every key,
    dtype, shape and byte size matches `expected` (checked first, from the record's metadata:
    nothing oversized or unexpected is decoded)."""
    problems: list[str] = []
    unexpected = [k for k in record.keys() if k not in expected]
    if unexpected:
        problems.append(f"{where}: unexpected arrays {_names(unexpected)}")
    want = Layout.of(expected)
    specs = dict(zip(want.names, zip(want.dtypes, want.shapes)))
    for key in record.keys():
        if key in specs:
            problems += _check_array(record[key], f"{where}.{key}", *specs[key])
    if problems:
        return {}, problems
    state: dict[str, torch.Tensor] = {}
    for key in record.keys():
        try:
            state[key] = torch.from_numpy(_read_npy(record[key].data, *specs[key]))
        except ValueError as exc:
            return {}, [f"{where}.{key}: {exc}"]
    return state, []


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(short(n)) for n in names[:5])
    return shown + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def _check_layout(got: Layout, want: Layout, where: str) -> list[str]:
    """A client's layout against the expected one: the same names, once each, in the same order,
    each with exactly the expected dtype and shape."""
    problems: list[str] = []
    seen: set[str] = set()
    twice: list[str] = []
    for n in got.names:
        if n in seen and n not in twice:
            twice.append(n)
        seen.add(n)
    wanted = set(want.names)
    unexpected = [n for n in dict.fromkeys(got.names) if n not in wanted]
    missing = [n for n in want.names if n not in seen]
    if unexpected:
        problems.append(f"{where}: layout names {_names(unexpected)} not expected")
    if missing:
        problems.append(f"{where}: layout lacks {_names(missing)}")
    if twice:
        problems.append(f"{where}: layout lists {_names(twice)} more than once")
    if not problems and got.names != want.names:
        i = next(i for i, (a, b) in enumerate(zip(got.names, want.names)) if a != b)
        problems.append(f"{where}: layout order differs from the model's (position {i}: {short(got.names[i])!r}, "
                        f"expected {want.names[i]!r})")
    specs = dict(zip(want.names, zip(want.dtypes, want.shapes)))
    mismatched = []
    checked: set[str] = set()
    for name, dtype, shape in zip(got.names, got.dtypes, got.shapes):
        if name not in specs or name in checked:  # a name listed twice is judged by its first entry
            continue
        checked.add(name)
        want_dtype, want_shape = specs[name]
        if dtype != want_dtype:
            mismatched.append(f"{where}.{name}: layout dtype {short(dtype)}, expected {want_dtype}")
        if shape != want_shape:
            mismatched.append(f"{where}.{name}: layout shape {shape[:8]}{'...' if len(shape) > 8 else ''}, "
                              f"expected {want_shape}")
    problems += mismatched[:10] + ([f"{where}: {len(mismatched) - 10} more layout mismatches"] if len(mismatched) > 10 else [])
    return problems


def _decode_packed(arrays: ArrayRecord, layout: ConfigRecord | None, expected: dict[str, torch.Tensor],
                   where: str) -> tuple[dict, list[str]]:
    """Decode a packed model (`tasks.packing`) laid out exactly as `expected` (the model the
    client was sent, for the tasks it was asked to train): fedmtl's client sends no layout, and
    one that is sent must be that one.

    Checked in this order, each step only if the last passed, nothing decoded before the end:
    a layout, if the reply has one: its structure (entries, types, lengths, no negative sizes),
    then against the expected one (names, order, dtypes, shapes); the flat arrays' metadata (one
    per dtype, of that dtype, exactly as long as the expected layout needs, no more bytes than
    that), then the payload (its npy header must agree, byte for byte as long as declared)."""
    want = Layout.of(expected)
    if layout is not None:
        try:
            got = Layout.from_wire(dict(layout))
        except ValueError as exc:
            return {}, [f"{where}: {short(exc)}"]
        problems = _check_layout(got, want, where)
        if problems:
            return {}, problems
    problems = []
    counts = want.counts()
    keys = list(arrays.keys())
    unexpected = [k for k in keys if k not in counts]
    if unexpected:
        problems.append(f"{where}: unexpected arrays {_names(unexpected)} (the model's dtypes are {list(counts)})")
    problems += [f"{where}: no {d} array for the model's {d} tensors" for d in counts if d not in keys]
    for dtype in (k for k in keys if k in counts):
        problems += _check_array(arrays[dtype], f"{where}.{dtype}", dtype, (counts[dtype],),
                                 f" (the {counts[dtype]} elements of the model it was sent)")
    if problems:
        return {}, problems
    buffers = {}
    for dtype, n in counts.items():
        try:
            buffers[dtype] = _read_npy(arrays[dtype].data, dtype, (n,))
        except ValueError as exc:
            return {}, [f"{where}.{dtype}: {short(exc)}"]
    return unpack(buffers, want), []


# ----------------------------------------------------------------------------- query


def read_query(reply: Message, sent: Sent, suite_tasks: list[str], max_examples: int) -> ClientInfo | Refused:
    """What a client says it holds: name, device, tasks and example counts (never data)."""
    problems = _check_origin(reply, sent)
    records, more = _records(reply, {P.INFO: ConfigRecord}, {P.INFO})
    problems += more
    if problems:
        return Refused(problems)
    info = records[P.INFO]
    name, device = info.get("name"), info.get("device", "cpu")
    tasks, train, test = info.get("tasks"), info.get("train-examples"), info.get("test-examples")
    if not isinstance(name, str) or not name or len(name) > 128 or not name.isprintable():
        problems.append(f"name {short(name)!r} is not a printable string of 1-128 characters")
    if not isinstance(device, str) or len(device) > 64:
        problems.append(f"device {short(device)!r} is not a short string")
    lists = {"tasks": tasks, "train-examples": train, "test-examples": test}
    for key, value in lists.items():
        if not isinstance(value, list):
            problems.append(f"{key} is {type(value).__name__}, expected a list")
    if problems:
        return Refused(problems)
    if not (len(tasks) == len(train) == len(test)):
        return Refused([f"{len(tasks)} tasks but {len(train)} train and {len(test)} test counts"])
    if len(tasks) > MAX_ENTRIES:
        return Refused([f"{len(tasks)} tasks listed, more than the {MAX_ENTRIES} a reply may carry"])
    if len(set(map(str, tasks))) != len(tasks):
        problems.append("a task is listed twice")
    held: list[str] = []
    counts_train, counts_test = {}, {}
    for t, n_train, n_test in zip(tasks, train, test):
        if not isinstance(t, str):
            problems.append(f"task name {short(t)!r} is not a string")
            continue
        for what, n in (("train", n_train), ("test", n_test)):
            if not _is_count(n):
                problems.append(f"{what} count of task {short(t)!r} is {short(n)!r}, not a non-negative integer")
            elif int(n) > max_examples:
                problems.append(f"{what} count of task {short(t)!r} is {int(n)}, more than max-examples = {max_examples}")
        if t in suite_tasks:
            held.append(t)
            counts_train[t], counts_test[t] = n_train, n_test
    if problems:
        return Refused(problems)
    return ClientInfo(
        node_id=sent.node, name=name, tasks=[t for t in suite_tasks if t in held],
        train_examples={t: int(n) for t, n in counts_train.items()},
        test_examples={t: int(n) for t, n in counts_test.items()}, device=device,
    )


def unknown_tasks(reply: Message, suite_tasks: list[str]) -> list[str]:
    """Task names a (valid) query reply lists that the suite does not have (for a log line)."""
    tasks = reply.content[P.INFO].get("tasks", [])
    return sorted(short(t) for t in tasks if t not in suite_tasks)[:10]


# ----------------------------------------------------------------------------- train


def read_train(
    reply: Message, sent: Sent, group: TaskGroup, client: ClientInfo, policy: ValidationPolicy,
    ask: AffinityAsk = NOTHING, max_metrics: int = MAX_ENTRIES,
) -> TrainReply | Refused:
    """A train reply fit to fuse, or why not. `group` holds the weights the client was sent;
    `ask` what it was asked to measure (its measurements are checked against it).

    A reply whose measurements are forged or broken is refused whole, update included: a client
    that lies about what it measured is not trusted with the model either.
    """
    problems = _check_origin(reply, sent)
    allowed = {P.MODEL: ArrayRecord, P.LAYOUT: ConfigRecord, P.METRICS: MetricRecord, P.CONFIG: ConfigRecord,
               P.AFFINITY: ArrayRecord}
    required = {P.MODEL, P.METRICS}  # a LAYOUT is optional: the coordinator knows the layout (checked if sent)
    if sent.evaluate:  # the scores of the model as sent, asked for with the training
        allowed[P.EVALUATION] = MetricRecord
        required.add(P.EVALUATION)
    records, more = _records(reply, allowed, required)
    problems += more
    if problems:
        return Refused(problems)
    asked = list(sent.tasks)
    # The client packs its update in the order of the model it was sent (the group's tasks).
    expected = group.state_for([t for t in group.tasks if t in asked])
    state, problems = _decode_packed(records[P.MODEL], records.get(P.LAYOUT), expected, "model")
    metrics = records[P.METRICS]
    if len(metrics) > max_metrics:
        problems.append(f"metrics: {len(metrics)} entries, more than the {max_metrics} a reply may carry")
    if problems:
        return Refused(problems)
    body, heads = split_state(state)
    body = {k: body[k] for k in group.body if k in body} | {k: v for k, v in body.items() if k not in group.body}
    examples, losses, seconds, steps, problems = _bookkeeping(metrics, asked, client)
    update = ClientUpdate(node_id=sent.node, body=body, heads=heads, examples=examples)  # type: ignore[arg-type]
    problems += policy.check(group.body, {t: group.heads[t] for t in asked}, asked, update)
    plain = dict(metrics)
    affinity, more = _read_affinity_stats(plain, asked, steps, ask)
    problems += more
    gradients, more = _read_gradient_report(records.get(P.AFFINITY), plain, asked, steps, ask, client.name, sent.gid)
    problems += more
    scores: dict[str, dict[str, float]] = {}
    if sent.evaluate:
        scores, more = read_scores(records[P.EVALUATION], asked, client, P.EVALUATION)
        problems += more
    if problems:
        return Refused(problems)
    return TrainReply(update, losses, seconds[P.TRAIN_SECONDS], seconds[P.AFFINITY_SECONDS], steps, affinity,
                      gradients, scores)


def read_probe(reply: Message, sent: Sent, client: ClientInfo, ask: AffinityAsk,
               max_metrics: int = MAX_ENTRIES) -> TrainReply | Refused:
    """A probe's reply (`P.MEASURE_ONLY`): the gradient summaries it was asked for and their
    bookkeeping, or why not. It may carry no model (nothing of a probe is fused) and must carry
    the summaries (they are all a probe is for); they are checked as a training client's are."""
    problems = _check_origin(reply, sent)
    records, more = _records(reply, {P.METRICS: MetricRecord, P.AFFINITY: ArrayRecord}, {P.METRICS, P.AFFINITY})
    no_model = f"unexpected record {P.MODEL!r}"
    problems += [f"{p} (a measure-only reply carries no model)" if p == no_model else p for p in more]
    if problems:
        return Refused(problems)
    metrics = records[P.METRICS]
    if len(metrics) > max_metrics:
        return Refused([f"metrics: {len(metrics)} entries, more than the {max_metrics} a reply may carry"])
    asked = list(sent.tasks)
    _, losses, seconds, steps, problems = _bookkeeping(metrics, asked, client)
    plain = dict(metrics)
    _, more = _read_affinity_stats(plain, asked, steps, NOTHING)  # a probe is never asked for virtual steps
    problems += more
    gradients, more = _read_gradient_report(records[P.AFFINITY], plain, asked, steps, ask, client.name, sent.gid)
    problems += more
    if gradients is None and not problems:
        problems.append("affinity: no gradient summary, which is all a probe is for")
    if problems:
        return Refused(problems)
    update = ClientUpdate(node_id=sent.node, body={}, heads={}, examples={})
    return TrainReply(update, losses, seconds[P.TRAIN_SECONDS], seconds[P.AFFINITY_SECONDS], steps, gradients=gradients)


def _bookkeeping(metrics, asked: list[str], client: ClientInfo) -> tuple[dict, dict[str, float], dict[str, float], int, list[str]]:
    """(examples, losses, seconds, steps, problems) of a train or probe reply's METRICS: counts
    bounded by what the client declared when it joined, finite losses, non-negative seconds."""
    problems: list[str] = []
    examples: dict[str, object] = {}
    losses: dict[str, float] = {}
    for t in asked:
        ex_key, loss_key = P.task_key(P.EXAMPLES, t), P.task_key(P.LOSS, t)
        if ex_key in metrics:
            examples[t] = metrics[ex_key]
        if loss_key in metrics:
            if not _finite(metrics[loss_key]):
                problems.append(f"{loss_key} = {short(metrics[loss_key])!r} is not a finite number")
            else:
                losses[t] = float(metrics[loss_key])
    for t, n in examples.items():
        if _is_count(n) and int(n) > client.train_examples.get(t, 0):
            problems.append(f"examples of task {t!r}: {int(n)}, more than the {client.train_examples.get(t, 0)} "
                            "this client declared when it joined")
    seconds = {}
    for key in (P.TRAIN_SECONDS, P.AFFINITY_SECONDS):
        value = metrics.get(key, 0.0)
        if not _finite(value) or float(value) < 0:
            problems.append(f"{key} = {short(value)!r} is not a non-negative number")
        seconds[key] = float(value) if _finite(value) else 0.0
    steps = metrics.get(P.STEPS, 0)
    if not _is_count(steps):
        problems.append(f"{P.STEPS} = {short(steps)!r} is not a non-negative integer")
        steps = 0
    return examples, losses, seconds, int(steps), problems


def _read_affinity_stats(metrics: dict, tasks: list[str], steps: int,
                         ask: AffinityAsk) -> tuple[dict[str, AffinityStats], list[str]]:
    """Virtual-step affinity sums/counts, only if asked for: only tasks the client trained, finite
    sums, counts no larger than its steps allow, means in the signal's range
    (`strategies.affinity.validate_affinity_stats`)."""
    out: dict[str, AffinityStats] = {}
    problems: list[str] = []
    max_count = max_virtual_measurements(steps, ask.every) if ask.virtual_step else 0
    for signal in SIGNALS:
        if not any(k.startswith(f"{signal}.") for k in metrics):
            continue
        if not ask.virtual_step:
            problems.append(f"affinity {signal}: virtual-step measurements this message did not ask for")
            continue
        try:
            stats = AffinityStats.from_metrics(metrics, prefix=signal)
        except (ValueError, TypeError) as exc:
            problems.append(f"affinity {signal}: {short(exc)}")
            continue
        found = validate_affinity_stats(stats, tasks, max_count, signal)
        if found:
            problems += [f"affinity {signal}: {short(p)}" for p in found]
        elif stats.counts.sum() > 0:
            out[signal] = stats
    return out, problems


def _read_gradient_report(record: ArrayRecord | None, metrics: dict, tasks: list[str], steps: int, ask: AffinityAsk,
                          client: str, gid: int | None) -> tuple[GradientReport | None, list[str]]:
    """Per-task gradient summaries, only if asked for: keys, dtypes, lengths and byte sizes are
    checked before decoding, then counts, norms, losses and the sketch seed
    (`strategies.affinity.validate_gradient_report`)."""
    if record is None and not has_gradient_report(None, metrics):
        return None, []
    if not ask.gradients:
        return None, ["affinity: gradient summaries this message did not ask for"]
    if record is None:
        return None, [f"affinity: summary metrics without the {P.AFFINITY!r} record"]
    expected = {P.task_key(P.AFFINITY_GRAD, t): torch.empty(ask.dim, dtype=torch.float32) for t in tasks}
    arrays, problems = _decode_state(record, expected, P.AFFINITY)
    if problems:
        return None, problems
    try:
        report = GradientReport.from_wire({k: v.numpy() for k, v in arrays.items()}, metrics, client=client, group=gid)
    except ValueError as exc:
        return None, [f"affinity: {short(exc)}"]
    found = validate_gradient_report(report, tasks, window_steps(ask.steps, len(tasks), steps), ask.dim,
                                     batch_size=ask.batch_size or None, expected_seed=ask.seed)
    return (None, [f"affinity: {short(p)}" for p in found]) if found else (report, [])


# ----------------------------------------------------------------------------- evaluate


def read_evaluate(reply: Message, sent: Sent, client: ClientInfo) -> dict[str, dict[str, float]] | Refused:
    """{task: {accuracy, loss, examples}} for exactly the tasks this message asked about."""
    problems = _check_origin(reply, sent)
    records, more = _records(reply, {P.METRICS: MetricRecord}, {P.METRICS})
    problems += more
    if problems:
        return Refused(problems)
    out, problems = read_scores(records[P.METRICS], list(sent.tasks), client)
    return Refused(problems) if problems else out


def read_scores(metrics: MetricRecord, tasks: list[str], client: ClientInfo,
                where: str = P.METRICS) -> tuple[dict[str, dict[str, float]], list[str]]:
    """A client's test scores ("accuracy.<task>", "loss.<task>", "examples.<task>") for exactly
    `tasks`: accuracy in [0, 1], a non-negative loss (inf or NaN allowed: a diverged model's
    loss is a result, not a lie), a whole count no larger than the test examples it declared.
    Returns ({task: {accuracy, loss, examples}}, problems), each problem naming `where`."""
    if len(metrics) > MAX_ENTRIES:
        return {}, [f"{where}: {len(metrics)} entries, more than the {MAX_ENTRIES} a reply may carry"]
    problems: list[str] = []
    asked = set(tasks)
    names = (P.ACCURACY, P.LOSS, P.EXAMPLES)
    for key in metrics.keys():
        prefix, _, task = key.partition(".")
        if prefix in names and task not in asked:
            problems.append(f"{where}: metric {short(key)!r} for a task this message did not ask about")
    out: dict[str, dict[str, float]] = {}
    for t in tasks:
        values = {n: metrics.get(P.task_key(n, t)) for n in names}
        missing = [n for n, v in values.items() if v is None]
        if missing:
            problems.append(f"{where}: task {t!r}: no {', '.join(missing)}")
            continue
        acc, loss, n = values[P.ACCURACY], values[P.LOSS], values[P.EXAMPLES]
        bad = len(problems)
        if not _finite(acc) or not 0.0 <= float(acc) <= 1.0:
            problems.append(f"{where}: accuracy of task {t!r} is {short(acc)!r}, not in [0, 1]")
        if not isinstance(loss, Real) or isinstance(loss, bool) or float(loss) < 0:
            problems.append(f"{where}: loss of task {t!r} is {short(loss)!r}, not a non-negative number")
        if not _finite(n) or float(n) < 0 or float(n) != int(float(n)):
            problems.append(f"{where}: examples of task {t!r} is {short(n)!r}, not a count")
        elif int(float(n)) > client.test_examples.get(t, 0):
            problems.append(f"{where}: examples of task {t!r}: {int(float(n))}, more than the "
                            f"{client.test_examples.get(t, 0)} test examples it declared")
        if len(problems) == bad:
            out[t] = {"accuracy": float(acc), "loss": float(loss), "examples": float(n)}
    return out, problems
