"""Test-and-benchmark facility: clients that misbehave on purpose and a grid that runs in-process.

  faults.py     a chaos ClientApp (crash, hang, NaN, wrong shape, huge or scaled updates)
  inprocess.py  an in-process Flower Grid that delivers messages to a ClientApp in threads
Production code never imports this package; tests and benchmarks both do.
"""
