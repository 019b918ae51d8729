"""Package marker: ships the `perplexity_from_nll` module with `distill` (load it with `load_metric`)."""
