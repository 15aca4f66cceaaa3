"""Task suites shared by the coordinator and the clients: tasks, model bodies and heads, data and partitions."""

from tasks.registry import load_suite
from tasks.suite import Suite, TaskData, TaskSpec

__all__ = ["Suite", "TaskData", "TaskSpec", "load_suite"]
