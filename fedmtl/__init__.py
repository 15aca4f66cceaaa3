"""fedmtl: federated multi-task training on Flower.

The packages beside this one are the system, each side in its own:
  coordinator/  the Flower ServerApp and its round (schedule, train, fuse, affinity, evaluate, regroup, record)
  client/       everything a client machine runs (the ClientApp, local training, data folders, `fedmtl client`)
  launch/       starting, watching and stopping Flower's processes for either side (SuperLink, SuperNode,
                simulation, the `flwr` CLI, the Fleet gateway, TLS and keys)
  strategies/   the algorithms, pure torch/numpy: fusion, validation, affinity, grouping, scheduling
  tasks/        task suites both sides load: the Suite contract, models, data
  common/       one small helper per job (atomic writes, signal handling)
  testbed/      chaos and hostile clients, an in-process grid: for tests and benchmarks only
This package is the public face: the `fedmtl` command (`fedmtl.cli`).
"""

__version__ = "0.1.0"
