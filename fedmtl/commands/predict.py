"""`fedmtl predict RUN_DIR INPUT`: class predictions of a run's saved models on new inputs.

INPUT is a NumPy array (.npy: one example or a batch), an archive (.npz: its array `x`), or
for text suites a text file with one example per line (`-` reads standard input). The run's
best models are used unless `--which latest`. Prints one line per input with each task's class
and its probability; `--json` prints one object per (input, task).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmtl.commands import load_for_command
from fedmtl.progress import add_output_options, json_line, output_mode


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict with a run's saved models on new inputs (.npy, .npz, text lines)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's output folder (e.g. runs/simulate)")
    p.add_argument("input", metavar="INPUT", help="input file (.npy, .npz, .txt) or - for text lines on stdin")
    p.add_argument("--task", action="append", default=None, metavar="T",
                   help="task to predict (repeat for several; default: every task of the run)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="the best round's models (default) or the latest")
    p.add_argument("--kind", default=None, help="input kind when the suffix does not say: npy, npz, text")
    p.add_argument("--suite", default=None, help="load the run with this suite instead of the one it recorded")
    p.add_argument("--probabilities", action="store_true", help="also print every class probability")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmtl.inputs import read_inputs

    mode = output_mode(args)
    loaded = load_for_command(args, mode)
    tasks = args.task or loaded.tasks
    unknown = [t for t in tasks if t not in loaded.tasks]
    if unknown:
        raise ValueError(f"--task {', '.join(unknown)}: run {args.run_dir} has no such task; its tasks: {', '.join(loaded.tasks)}")
    x = read_inputs(args.input, loaded.suite, args.kind)
    probs = {t: loaded[t].predict_proba(x) for t in tasks}
    if mode == "json":
        for i in range(len(x)):
            for t in tasks:
                p = probs[t][i]
                fields = {"index": i, "task": t, "class": int(p.argmax()), "probability": float(p.max())}
                if args.probabilities:
                    fields["probabilities"] = [float(v) for v in p]
                json_line("prediction", **fields)
        json_line("result", inputs=len(x), tasks=tasks, which=loaded.which, round=loaded.round, suite=loaded.suite_name)
        return 0
    if mode != "quiet":
        print(f"{args.run_dir}: {loaded.which} models (round {loaded.round}, suite {loaded.suite_name!r}); "
              f"{len(x)} input(s) from {args.input}")
        print("\t".join(["input", *tasks]))
    for i in range(len(x)):
        cells = []
        for t in tasks:
            p = probs[t][i]
            cell = f"{int(p.argmax())} ({float(p.max()):.3f})"
            if args.probabilities:
                cell += " [" + " ".join(f"{v:.3f}" for v in p) + "]"
            cells.append(cell)
        print("\t".join([str(i), *cells]))
    return 0
