"""Experiments that drive fedmtl's pieces end to end (each in its own subpackage)."""
