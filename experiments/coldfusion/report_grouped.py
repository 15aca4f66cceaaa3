"""The grouped ColD Fusion part of the report: the groups, the affinity they came from, the client
compute, and grouped against plain on the same seeds.

Only seeds that ran grouped ColD Fusion are compared (paired with their own plain run and the
original MiniLM of the same seed); plain-only seeds stay in the plain tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.coldfusion.report import LABELS, figure, rows, save_figure

BLOCKS = (("seen", ("probe", "finetune")), ("held_out", ("probe", "finetune", "fewshot_probe", "fewshot_finetune")))


def _mean_sd(values: list[float]) -> str:
    a = np.asarray(values, dtype=float) * 100
    sd = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return f"{a.mean():.1f} ± {sd:.1f}"


def _signed(values: list[float]) -> str:
    a = np.asarray(values, dtype=float) * 100
    sd = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return f"{a.mean():+.1f} ± {sd:.1f}"


def _per_seed_average(results: list[dict], method: str, split: str, metric: str, key: str) -> list[float]:
    flat = [x for x in rows(results, method) if x["split"] == split and x["metric"] == metric]
    seeds = sorted({x["seed"] for x in flat})
    return [float(np.mean([x[key] for x in flat if x["seed"] == s])) for s in seeds]


def comparison_table(results: list[dict]) -> str:
    """Average accuracy per block and metric: MiniLM, plain ColD, grouped ColD, grouped - plain."""
    lines = ["| datasets | metric | MiniLM | plain ColD | grouped ColD | grouped - plain |", "|---|---|---|---|---|---|"]
    for split, metrics in BLOCKS:
        for metric in metrics:
            orig = _per_seed_average(results, "grouped", split, metric, "original")
            plain = _per_seed_average(results, "plain", split, metric, "fused")
            grouped = _per_seed_average(results, "grouped", split, metric, "fused")
            diff = [g - p for g, p in zip(grouped, plain)]
            name = "seen" if split == "seen" else "held-out"
            lines.append(f"| {name} | {LABELS[metric]} | {_mean_sd(orig)} | {_mean_sd(plain)} | {_mean_sd(grouped)} | "
                         f"{_signed(diff)} |")
    return "\n".join(lines)


def per_dataset_seen(results: list[dict]) -> str:
    """Seen datasets one by one: plain and grouped, probe and finetune (seeds averaged)."""
    lines = ["| dataset | group | probe: plain | grouped | finetune: plain | grouped |", "|---|---|---|---|---|---|"]
    groups = results[0]["grouped"]["final_groups"]
    gid = {t: i for i, g in enumerate(groups) for t in g}
    for task in results[0]["config"]["seen"]:
        cells = [task, str(gid.get(task, "-"))]
        for metric in ("probe", "finetune"):
            cells += [_mean_sd([r["eval"]["plain"][task][metric] for r in results]),
                      _mean_sd([r["eval"]["grouped"][task][metric] for r in results])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def affinity_table(g: dict) -> str:
    """The tracked affinity the split read (rows: source task i, columns: target j, Z(i→j))."""
    signal = g.get("affinity_signal") or next(iter(g["affinity"]))
    tracked = g["affinity"][signal]
    tasks, m = tracked["tasks"], tracked["matrix"]
    lines = ["| Z(i→j), i \\ j | " + " | ".join(str(j + 1) for j in range(len(tasks))) + " |",
             "|---|" + "---|" * len(tasks)]
    for i, t in enumerate(tasks):
        cells = ["—" if i == j else ("n/a" if v is None else f"{v:+.2e}") for j, v in enumerate(m[i])]
        lines.append(f"| {i + 1} {t} | " + " | ".join(cells) + " |")
    return f"signal `{signal}`:\n\n" + "\n".join(lines)


def _groups_over_rounds(groups_per_round: list[list[list[str]]]) -> str:
    spans: list[tuple[int, int, list[list[str]]]] = []
    for r, groups in enumerate(groups_per_round):
        if spans and spans[-1][2] == groups:
            spans[-1] = (spans[-1][0], r, groups)
        else:
            spans.append((r, r, groups))
    return "; ".join(f"rounds {a}-{b}: " + " | ".join("{" + ", ".join(g) + "}" for g in groups)
                     for a, b, groups in spans)


def compute_curves(r: dict) -> dict[str, tuple[list[int], list[float]]] | None:
    """Per method, (cumulative client steps, mean seen accuracy) after each iteration / round.

    Client steps count every contributor's local steps and every probe's gradient window (a
    probe step is a forward and backward pass with no optimizer step, so this slightly
    over-counts probes). None when the seed's results predate the seen-accuracy curves."""
    g = r.get("grouped", {})
    if "seen_curve" not in r or "seen_accuracy_per_round" not in g:
        return None
    cfg = r["config"]
    plain_x, plain_y = [], []
    for point in r["seen_curve"]:
        plain_x.append(point["iteration"] * cfg["contributors"] * cfg["local_steps"])
        plain_y.append(float(np.mean(list(point["accuracy"].values()))))
    probes = g.get("probes_per_round") or [[] for _ in g["clients_per_round"]]
    grouped_x, grouped_y, steps = [], [], 0
    for rnd, acc in enumerate(g["seen_accuracy_per_round"]):
        steps += len(g["clients_per_round"][rnd]) * cfg["local_steps"] + len(probes[rnd]) * g.get("probe_steps", 0)
        values = [v for v in acc.values() if v is not None]
        if values:
            grouped_x.append(steps)
            grouped_y.append(float(np.mean(values)))
    return {"plain": (plain_x, plain_y), "grouped": (grouped_x, grouped_y)}


def _reached(curve: tuple[list[int], list[float]], target: float) -> int | None:
    """The client steps after which `curve` first reaches `target` (None: never)."""
    return next((x for x, y in zip(*curve) if y >= target - 1e-12), None)


def compute_table(results: list[dict]) -> str:
    """Seen accuracy (the datasets' own heads) per unit of client compute, plain against grouped,
    and the compute grouped needs to reach plain's final accuracy."""
    lines = ["| seed | after | plain: client steps | plain: seen accuracy | grouped: client steps | "
             "grouped: seen accuracy |", "|---|---|---|---|---|---|"]
    reach = []
    for r in results:
        curves = compute_curves(r)
        if curves is None:
            continue
        (px, py), (gx, gy) = curves["plain"], curves["grouped"]
        for i in range(max(len(px), len(gx))):
            cell = lambda xs, ys: (f"{xs[i]}", f"{100 * ys[i]:.1f}") if i < len(xs) else ("", "")  # noqa: E731
            lines.append(f"| {r['seed']} | iteration {i} | " + " | ".join((*cell(px, py), *cell(gx, gy))) + " |")
        target = py[-1]
        same = float(np.interp(px[-1], gx, gy))
        reach.append((r["seed"], target, _reached(curves["grouped"], target), px[-1], gy[-1], gx[-1], same))
    if not reach:
        return ""
    words = []
    for seed, target, at, plain_total, g_final, g_total, same in reach:
        got = (f"reached it after {at} client steps ({100 * at / plain_total:.0f}% of plain's {plain_total})"
               if at is not None else "did not reach it")
        words.append(f"seed {seed}: plain ends at {100 * target:.1f}% after {plain_total} steps; grouped at the same "
                     f"{plain_total} steps {100 * same:.1f}% (interpolated), {got}, and ends at "
                     f"{100 * g_final:.1f}% after {g_total} steps")
    return "\n".join(lines) + "\n\nCompute to reach plain's final seen accuracy: " + "; ".join(words) + "."


def plot_compute(results: list[dict], path: Path) -> Path | None:
    """PNG: mean seen accuracy against cumulative client steps, plain and grouped, one line per seed."""
    curves = [(r["seed"], c) for r in results if (c := compute_curves(r)) is not None]
    if not curves:
        return None
    fig, ax = figure()
    styles = {"plain": ("tab:blue", "o"), "grouped": ("tab:green", "s")}
    dashes = ("-", "--", ":", "-.")
    for i, (seed, c) in enumerate(curves):
        for method, (colour, marker) in styles.items():
            xs, ys = c[method]
            ax.plot(xs, [100 * y for y in ys], marker=marker, color=colour, alpha=0.85, ls=dashes[i % len(dashes)],
                    label=f"{method} ColD, seed {seed}")
    ax.set_xlabel(f"cumulative client steps (batch {results[0]['config']['batch_size']}; probes' gradient windows included)")
    ax.set_ylabel("seen datasets: mean test accuracy (%)")
    ax.set_title("Seen accuracy per unit of client compute")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def grouped_markdown(results: list[dict], cfg, compute_plot: str | None = None) -> str:
    """Everything the report says about grouped ColD Fusion (empty when no seed ran it)."""
    mine = [r for r in results if "grouped" in r and "grouped" in r["eval"]]
    if not mine:
        return ""
    g0 = mine[0]["grouped"]
    plain_trainings = cfg.iterations * cfg.contributors
    plain_examples = plain_trainings * cfg.local_steps * cfg.batch_size
    out = [f"### Grouped ColD Fusion (`--grouping {g0['mode']}`), seed(s) {[r['seed'] for r in mine]}", ""]
    for r in mine:
        g = r["grouped"]
        cov = g.get("affinity_coverage") or {}
        plain_seconds = sum(it["seconds"] for it in r["fusion"]["iterations"])
        out += [
            (f"Seed {r['seed']}: groups {_groups_over_rounds(g['groups_per_round'])}. "
             f"Affinity measured in {g['affinity_measured_rounds']} round(s) before the split; pair coverage "
             f"(ordered pairs): " + ", ".join(f"{k} {v}" for k, v in cov.items()) + "."),
            "",
            (f"Client compute (every training is {cfg.local_steps} steps of {cfg.batch_size}): grouped "
             f"{g['client_trainings']} contributor trainings, "
             f"{g['client_trainings'] * cfg.local_steps * cfg.batch_size} examples"
             + (f", plus {g['client_probes']} measure-only probes of {g.get('probe_steps', 0)} gradient steps each"
                if g.get("client_probes") else "")
             + f", {g['train_seconds']:.0f} s of client "
             f"training plus {g.get('affinity_seconds', 0.0):.1f} s of affinity measurement; plain {plain_trainings} "
             f"trainings, {plain_examples} examples, {plain_seconds:.0f} s (fusion iterations, one process)."),
            "",
        ]
        if g.get("events"):
            out += ["Events: " + "; ".join(g["events"]) + ".", ""]
        if g.get("affinity"):
            out += ["Tracked affinity at the split (" + ("all pairs cross-client" if not cov.get("same-client") else
                    "mixed coverage") + "), " + affinity_table(g), ""]
    out += [f"Grouped vs plain, average accuracy %, mean ± sd over {len(mine)} seed(s) (same seeds, paired):", "",
            comparison_table(mine), "", "Seen datasets one by one (group = final group index):", "",
            per_dataset_seen(mine)]
    per_compute = compute_table(mine)
    if per_compute:
        out += ["", "Seen accuracy per unit of client compute (each dataset's own head on its test split, as the "
                "federation serves it; mean over the seen datasets):", "", per_compute]
        if compute_plot:
            out += ["", f"![seen accuracy per client compute]({compute_plot})"]
    return "\n".join(out)
