"""Package marker: ships the `exact_match` module with `distill` (load it with `load_metric`)."""
