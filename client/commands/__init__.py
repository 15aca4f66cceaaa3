"""The client side's command lines: `fedmtl client` (join a coordinator) and `fedmtl prepare-data`."""
