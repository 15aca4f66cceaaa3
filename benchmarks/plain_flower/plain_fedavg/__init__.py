"""Plain Flower FedAvg on fedmtl's task suites (the framework-overhead baseline)."""
