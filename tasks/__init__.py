"""Thin Prefect tasks: each runs one DVC stage in a subprocess and reports what it produced."""
