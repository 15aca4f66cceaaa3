"""The live dashboard of a run: `fedmtl dashboard RUN_DIR` (server.py serves what state.py computes)."""
