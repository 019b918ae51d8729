"""Package marker: ships the `distinct_n` module with `distill` (load it with `load_metric`)."""
