"""One module per `fedmtl` subcommand, each with `register(subparsers)` setting `func`."""
