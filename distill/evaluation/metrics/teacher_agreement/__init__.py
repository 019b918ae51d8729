"""Package marker: ships the `teacher_agreement` module with `distill` (load it with `load_metric`)."""
