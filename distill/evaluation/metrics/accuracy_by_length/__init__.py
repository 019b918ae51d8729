"""Package marker: ships the `accuracy_by_length` module with `distill` (load it with `load_metric`)."""
