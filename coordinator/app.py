"""The fedmtl ServerApp: Flower calls `main` with a Grid; the Coordinator does the rest."""

from __future__ import annotations

import sys

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.config import RunConfig
from coordinator.loop import Coordinator
from coordinator.plots import write_plots

app = ServerApp()


def _log(line: str) -> None:
    print(line, flush=True)
    sys.stdout.flush()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_dict(dict(context.run_config))
    _log(f"fedmtl: suite {cfg.suite!r}, mode {cfg.mode!r}, {cfg.rounds} rounds, output {cfg.out}")
    coordinator = Coordinator(grid, cfg, log=_log)
    history = coordinator.run()
    if cfg.plots:
        paths = write_plots(history.to_dict(), coordinator.out / "plots")
        heatmaps = [p for p in paths if p.name.startswith("affinity")]
        others = ", ".join(p.name for p in paths if p not in heatmaps)
        _log(f"plots: {others}" + (f" and {len(heatmaps)} affinity heatmaps" if heatmaps else "") + f" in {coordinator.out / 'plots'}")
