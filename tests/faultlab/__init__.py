"""The fault lab: one driver that runs a named fault against a named target and counts.

Used by ``tests/faults`` (which asserts the guarantees that hold by design) and
by ``benchmarks/faults.py`` (which prints and plots the figures). Workers are
separate processes (``python -m faultlab.worker``) so that they can be killed,
paused and restarted; every event they see goes to an append-only ledger that
a SIGKILL cannot tear, and the counts come from the ledgers alone.
"""
