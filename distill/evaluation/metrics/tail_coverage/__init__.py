"""Package marker: ships the `tail_coverage` module with `distill` (load it with `load_metric`)."""
