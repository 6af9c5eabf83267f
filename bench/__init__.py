"""Benchmarks: throughput and latency of Stride on SQLite and PostgreSQL.

Each benchmark prints, beside its figures, the raw limit of the store measured in the same
run (single-row committed inserts per second), because the machine is shared and noisy:
a figure means something only next to what the database itself managed at that moment.
"""
