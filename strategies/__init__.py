"""Pure federated multi-task algorithms (torch/numpy only, never Flower): fusion, affinity, grouping, scheduling."""
