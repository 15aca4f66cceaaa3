"""fedmtl coordinator: the Flower ServerApp (round loop, scheduling, group state, checkpoints) and the CLI."""
