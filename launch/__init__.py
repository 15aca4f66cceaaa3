"""Starting, watching and stopping Flower's processes, for either side of a federation.

  processes.py   process families found again by an environment marker, reapers, free ports
  superlink.py   `flower-superlink` (simulation or deployment) with its state, home and log
  supernode.py   `flower-supernode` for a client machine, and reading what it prints
  simulation.py  `fedmtl simulate`'s engine: private SuperLink + one run, live progress, teardown
  flwr_cli.py    the `flwr` command line against a SuperLink (runs, logs, status, node keys)
  gateway.py     the Fleet-only gateway that keeps Control and Runtime APIs off the network
  gateway_limits.py / gateway_auth.py / gateway_server.py   its size, concurrency and time limits,
                 its signature check on the headers, its connection limits and deadlines
  bundle.py      the app bundle, built from a clean copy of the project's code only
  pinned_clientapp.py  `flwr-clientapp` that runs only app bundles a client pinned
  security.py    TLS certificates and client key pairs
  service.py     the coordinator service: SuperLink + gateway + key registry + the run
The coordinator and client packages use these; nothing here knows about rounds or training.
"""
