"""`fedmtl evaluate RUN_DIR --data FOLDER...`: re-evaluate a run's saved models on client data folders.

Each FOLDER is a client data folder (the format `fedmtl prepare-data` writes and `fedmtl
client --data` reads, see client/folder.py). Per task, accuracy and loss are pooled over the
folders weighted by their examples, exactly as the coordinator pools its clients' evaluations,
so on the clients' own folders the numbers equal the run's history for that round.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fedmtl.commands import load_for_command
from fedmtl.progress import add_output_options, json_line, output_mode, task_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="re-evaluate a run's saved models on client data folders",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's output folder")
    p.add_argument("--data", type=Path, nargs="+", required=True, metavar="FOLDER", help="client data folders")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="the best round's models (default) or the latest")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split of the folders (default test)")
    p.add_argument("--suite", default=None, help="load the run with this suite instead of the one it recorded")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    mode = output_mode(args)
    loaded = load_for_command(args, mode)
    with task_progress(mode, "evaluating", len(args.data)) as advance:
        results = loaded.evaluate_folders(args.data, split=args.split, on_folder=advance)
    ordered = [t for t in loaded.tasks if t in results]
    accs = [results[t]["accuracy"] for t in ordered if math.isfinite(results[t]["accuracy"])]
    mean = sum(accs) / len(accs) if accs else math.nan
    summary = dict(which=loaded.which, round=loaded.round, suite=loaded.suite_name, split=args.split,
                   folders=[str(f) for f in args.data], mean_accuracy=mean)
    if mode == "json":
        for t in ordered:
            json_line("task", task=t, group=loaded[t].group, accuracy=results[t]["accuracy"],
                      loss=results[t]["loss"], examples=int(results[t]["examples"]))
        json_line("result", **summary)
        return 0
    if mode != "quiet":
        print(f"{args.run_dir}: {loaded.which} models (round {loaded.round}, suite {loaded.suite_name!r}) on the "
              f"{args.split} split of {len(args.data)} folder(s)")
        print(f"{'task':<24} {'group':>5} {'accuracy':>9} {'loss':>9} {'examples':>9}")
        for t in ordered:
            r = results[t]
            print(f"{t:<24} {loaded[t].group:>5} {r['accuracy']:>9.4f} {r['loss']:>9.4f} {int(r['examples']):>9}")
    print(f"mean accuracy {mean:.4f} over {len(ordered)} tasks")
    return 0
