"""Formal model, cost model, schedule checker, metrics, theorem bounds and exact solvers."""
