"""`fedmtl coldfusion`: ColD Fusion on all-MiniLM-L6-v2 across real text datasets, evaluated as in the paper.

Each simulated contributor holds one seen dataset. Every iteration samples --contributors of
them; each finetunes the shared body (and its own head) on its data; the bodies are averaged.
Then the fused body and the original MiniLM are compared as starting points: a linear probe on
the frozen body (ColD-Frozen) and a full finetune, on the seen datasets and on held-out ones no
contributor trained on, including few-shot (--fewshot-labels). Several seeds.

Writes OUT/results.json, results.csv, summary.json, heldout_gain.png, report.md, one
seed_<s>.json and fused_seed<s>.safetensors per seed; --docs FILE puts the report into FILE
between its `coldfusion:results` markers; --export DIR writes the first seed's fused body as a
transformers / sentence-transformers folder with its task heads. --grouping mas|dynamic also
runs grouped ColD Fusion through fedmtl's round loop (see experiments/coldfusion/grouped.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

PRESET_NAMES = ("full", "reduced", "tiny")
START, END = "<!-- coldfusion:results:start -->", "<!-- coldfusion:results:end -->"

# flag -> (config field, type, help)
FLAGS: dict[str, tuple[str, type, str]] = {
    "--iterations": ("iterations", int, "fusion iterations"),
    "--contributors": ("contributors", int, "contributors (datasets) sampled per iteration"),
    "--local-steps": ("local_steps", int, "finetuning steps of each contributor per iteration"),
    "--batch-size": ("batch_size", int, "batch size (contributors and evaluation)"),
    "--lr": ("lr", float, "learning rate (AdamW)"),
    "--max-length": ("max_length", int, "tokens per text (longer texts are truncated)"),
    "--train-per-task": ("train_per_task", int, "training examples per dataset (after class balancing)"),
    "--test-per-task": ("test_per_task", int, "test examples per dataset"),
    "--finetune-steps": ("finetune_steps", int, "steps of the full-finetune evaluation"),
    "--fewshot-labels": ("fewshot_labels", int, "labels of the few-shot evaluation"),
    "--fewshot-steps": ("fewshot_steps", int, "steps of the few-shot finetune evaluation"),
    "--curve-every": ("curve_every", int, "probe the held-out datasets every N iterations"),
    "--grouping": ("grouping", str, "none (plain ColD Fusion only), mas or dynamic (also grouped ColD Fusion)"),
    "--split-round": ("split_round", int, "grouped: iterations before the first split"),
    "--max-groups": ("max_groups", int, "grouped: at most this many groups"),
    "--affinity-coverage": ("affinity_coverage", str, "grouped: the undrawn datasets' holders in measuring rounds: "
                            "probe (measure only, the default), train, or none"),
    "--device": ("device", str, "cpu or cuda"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("coldfusion", help="ColD Fusion on MiniLM across real text datasets, with its evaluation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESET_NAMES, default="full",
                   help="full (about an hour on 2 cores), reduced (what docs/coldfusion.md reports), tiny (tests)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (default: the preset's)")
    for flag, (name, kind, text) in FLAGS.items():
        p.add_argument(flag, dest=name, type=kind, default=None, help=text)
    p.add_argument("--out", type=Path, default=Path("runs/coldfusion"), help="output folder (default runs/coldfusion)")
    p.add_argument("--reuse", action="store_true", help="reuse seed results already in --out with the same configuration (a seed run plain gets only grouped ColD Fusion added)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild the results and report from the seed files in --out (seeds run plain "
                        "and seeds run grouped may be mixed; plain tables use every seed, grouped ones the grouped seeds)")
    p.add_argument("--docs", type=Path, default=None, help="markdown file whose coldfusion:results block gets the report")
    p.add_argument("--export", type=Path, default=None, help="export the first seed's fused body and heads to this folder")
    p.add_argument("--export-from", type=Path, default=None,
                   help="only export: a fedmtl text-suite model (.safetensors, e.g. runs/x/models/group_0.safetensors)")
    p.add_argument("--no-progress", action="store_true", help="plain progress lines instead of a progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from experiments.coldfusion.config import PRESETS  # noqa: PLC0415

    changes = {name: getattr(args, name) for _flag, (name, _k, _t) in FLAGS.items() if getattr(args, name) is not None}
    if args.seeds:
        try:
            changes["seeds"] = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    return dataclasses.replace(PRESETS[args.preset], **changes)


class _Bar:
    """A rich progress bar, or plain lines (--no-progress, or no terminal)."""

    def __init__(self, total: int, plain: bool) -> None:
        self.plain = plain or not sys.stderr.isatty()
        self.done, self.total, self.last = 0, total, 0.0
        if not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn  # noqa: PLC0415

            self.progress = Progress(TextColumn("[bold]coldfusion[/]"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                                     transient=False)
            self.task = self.progress.add_task("starting", total=total)
            self.progress.start()

    def tick(self, n: int, description: str) -> None:
        self.done += n
        if self.plain:
            now = time.monotonic()
            if now - self.last > 10 or self.done >= self.total:
                print(f"  [{self.done}/{self.total}] {description}", flush=True)
                self.last = now
        else:
            self.progress.update(self.task, advance=n, description=description)

    def close(self) -> None:
        if not self.plain:
            self.progress.stop()


def _save_state(path: Path, body, heads, meta: dict) -> None:
    from safetensors.torch import save_file  # noqa: PLC0415

    from tasks.models import join_state  # noqa: PLC0415

    state = {k: v.contiguous() for k, v in join_state(body, heads).items()}
    save_file(state, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})


def report_markdown(results: list[dict], cfg, out: Path, plot_name: str, compute_plot: str | None = None) -> str:
    """The generated part of docs/coldfusion.md: configuration, cost, tables, plot, grouped results."""
    from experiments.coldfusion.report import summary, tables_markdown  # noqa: PLC0415

    secs = [r["fusion"]["seconds_per_iteration"] for r in results]
    totals = [r["seconds"]["total"] for r in results]
    iters = results[0]["fusion"]["iterations"]
    lines = [
        f"Configuration (`{json.dumps({k: v for k, v in results[0]['config'].items()})}`), seeds "
        f"{[r['seed'] for r in results]}.",
        "",
        f"Cost: one fusion iteration ({cfg.contributors} contributors x {cfg.local_steps} steps x batch {cfg.batch_size}) took "
        f"{sum(secs) / len(secs):.1f} s on average; a whole seed (fusion, held-out curve, evaluation of both bodies) "
        f"{sum(totals) / len(totals) / 60:.1f} min. Body moved by fusion (L2): "
        + ", ".join(f"{r['fusion']['body_shift']:.2f}" for r in results) + ".",
        "",
        "Contributors per iteration (seed " + str(results[0]["seed"]) + "): "
        + "; ".join(f"{it['iteration']}: {', '.join(it['contributors'])}" for it in iters) + ".",
        "",
        tables_markdown(results),
        "",
        f"![held-out gain over iterations]({plot_name})",
    ]
    s = summary(results)
    held = s.get("held_out", {})
    if "probe" in held and "fewshot_probe" in held:
        lines += ["", f"Held-out average gain: probe {held['probe']['gain'][0]:+.2f} ± {held['probe']['gain'][1]:.2f}, "
                  f"finetune {held['finetune']['gain'][0]:+.2f} ± {held['finetune']['gain'][1]:.2f}, few-shot probe "
                  f"{held['fewshot_probe']['gain'][0]:+.2f} ± {held['fewshot_probe']['gain'][1]:.2f}, few-shot finetune "
                  f"{held['fewshot_finetune']['gain'][0]:+.2f} ± {held['fewshot_finetune']['gain'][1]:.2f} points "
                  f"(datasets with a positive mean gain, probe: {held['probe']['wins']} of {held['probe']['n']})."]
    grouped = [r for r in results if "grouped" in r.get("eval", {})]
    if grouped:
        from experiments.coldfusion.report_grouped import grouped_markdown  # noqa: PLC0415

        lines += ["", grouped_markdown(grouped, cfg, compute_plot), "", "Grouped ColD Fusion per dataset (seen datasets on their "
                  "group's body, held-out ones on the task-weighted mean of the group bodies):", "",
                  tables_markdown(grouped, "grouped")]
    return "\n".join(lines)


def update_docs(path: Path, block: str) -> None:
    """Replace the text between the results markers of `path` (append the block if they are missing)."""
    text = path.read_text() if path.is_file() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{START}\n{block}\n{END}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{START}\n{block}\n{END}\n"
    path.write_text(text)


def export_only(source: Path, dest: Path) -> int:
    from safetensors import safe_open  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    from tasks.text.export import export_text_model  # noqa: PLC0415

    if not source.is_file():
        raise FileNotFoundError(f"--export-from {source}: no such file")
    with safe_open(str(source), "pt") as fh:
        meta = fh.metadata() or {}
    export_text_model(load_file(str(source)), dest, metadata={"source": str(source), **meta})
    print(f"exported {source} to {dest} (AutoModel.from_pretrained / SentenceTransformer; heads in heads.json)")
    return 0


def run(args: argparse.Namespace) -> int:
    from tasks.text.minilm import TextExtraMissing  # noqa: PLC0415

    try:
        return _run(args)
    except TextExtraMissing as exc:  # one clear line naming the extra, not a traceback
        raise ValueError(str(exc)) from None


def reusable_plain(prior: dict, cfg, grouped_ok: bool = False) -> bool:
    """Whether a saved seed result holds this configuration's plain ColD Fusion (same settings
    but for the grouping ones) and no grouped run (unless `grouped_ok`), so only grouped ColD
    Fusion has to be added."""
    from experiments.coldfusion.config import GROUPED_FIELDS  # noqa: PLC0415

    saved = dict(prior.get("config") or {})
    for name in GROUPED_FIELDS:
        saved.pop(name, None)
    return (saved == cfg.plain_key() and (grouped_ok or "grouped" not in prior)
            and "plain" in prior.get("eval", {}))


def _run(args: argparse.Namespace) -> int:
    if args.export_from is not None:
        if args.export is None:
            raise ValueError("--export-from needs --export DIR (where to write the model folder)")
        return export_only(args.export_from, args.export)
    cfg = config_from_args(args)
    from experiments.coldfusion.experiment import add_grouped, grouped_units, run_seed, work_units  # noqa: PLC0415
    from experiments.coldfusion.report import write_results  # noqa: PLC0415

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"fedmtl coldfusion: {len(cfg.seen)} contributor datasets, {len(cfg.held_out)} held out, {cfg.iterations} "
          f"iterations x {cfg.contributors} contributors x {cfg.local_steps} steps, seeds {list(cfg.seeds)}, "
          f"grouping {cfg.grouping!r} -> {out}", flush=True)
    results, todo, add_grouping = [], [], []
    for seed in cfg.seeds:
        saved = out / f"seed_{seed}.json"
        if getattr(args, "report_only", False):
            prior = json.loads(saved.read_text()) if saved.is_file() else None
            if prior is None or not reusable_plain(prior, cfg, grouped_ok=True):
                raise ValueError(f"--report-only: {saved} is missing or was run with another configuration")
            results.append(prior)
            continue
        if args.reuse and saved.is_file():
            prior = json.loads(saved.read_text())
            if prior.get("config") == cfg.fusion_key():
                results.append(prior)
                print(f"  seed {seed}: reusing {saved}")
                continue
            if cfg.grouping != "none" and reusable_plain(prior, cfg):
                add_grouping.append(prior)
                print(f"  seed {seed}: reusing plain ColD Fusion of {saved}; running grouped ({cfg.grouping})")
                continue
        todo.append(seed)
    bar = _Bar(work_units(cfg) * len(todo) + grouped_units(cfg) * len(add_grouping), args.no_progress)
    try:
        for prior in add_grouping:
            result = add_grouped(cfg, prior["seed"], prior, bar.tick)
            (out / f"seed_{prior['seed']}.json").write_text(json.dumps(result, indent=1) + "\n")
            results.append(result)
        for seed in todo:
            result, body, heads = run_seed(cfg, seed, bar.tick)
            (out / f"seed_{seed}.json").write_text(json.dumps(result, indent=1) + "\n")
            _save_state(out / f"fused_seed{seed}.safetensors", body, heads, {"seed": seed, "config": cfg.fusion_key()})
            results.append(result)
    finally:
        bar.close()
    results.sort(key=lambda r: list(cfg.seeds).index(r["seed"]))
    paths = write_results(results, out)
    compute_plot = paths.get("compute_plot")
    block = report_markdown(results, cfg, out, paths["plot"].name, compute_plot.name if compute_plot else None)
    (out / "report.md").write_text(block + "\n")
    print(block)
    if args.docs is not None:
        import shutil  # noqa: PLC0415

        plot = args.docs.parent / "coldfusion_heldout_gain.png"
        shutil.copyfile(paths["plot"], plot)
        docs_compute = None
        if compute_plot is not None:
            docs_compute = args.docs.parent / "coldfusion_seen_per_compute.png"
            shutil.copyfile(compute_plot, docs_compute)
        update_docs(args.docs, report_markdown(results, cfg, out, plot.name, docs_compute.name if docs_compute else None))
        print(f"updated {args.docs} (and {plot}{', ' + str(docs_compute) if docs_compute else ''})")
    if args.export is not None:
        from safetensors.torch import load_file  # noqa: PLC0415

        from tasks.text.export import export_text_model  # noqa: PLC0415
        from tasks.text.suite import tokenized  # noqa: PLC0415

        first = cfg.seeds[0]
        classes = {t: list(tokenized(t, cfg.max_length, cfg.train_per_task, cfg.test_per_task, cfg.data_seed, "").classes)
                   for t in cfg.seen}
        export_text_model(load_file(str(out / f"fused_seed{first}.safetensors")), args.export, classes=classes,
                          metadata={"coldfusion": cfg.fusion_key(), "seed": first})
        print(f"exported the fused body of seed {first} to {args.export}")
    print(f"done: results in {out} ({', '.join(p.name for p in paths.values())}, report.md)")
    return 0
