"""Small helpers both sides use, one job each: atomic file writes (`common.atomic`) and stopping
cleanly on SIGTERM/SIGINT (`common.signals`). No Flower, no torch."""
