"""From findings to fixes: recommendation rules (each with the numbers that justify it),
the near-singular-design advisory, and the one verification driver that re-runs a run
with a recommendation's delta (same data, init and seed), or replays a watched run from
a checkpoint before its failure.
"""
