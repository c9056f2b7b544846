"""The problem layer: what a problem file declares, and its compilation to a BilevelProblem.

Nothing in ``pinnctl.hypergrad`` imports this package (DESIGN.md §2). Problem files import the
short path ``pinnctl.problem``, which re-exports what they use.
"""
