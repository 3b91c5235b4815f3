"""Command-line entry points (`python -m lt_utils.cli.<name>`): the study pipeline, benchmarks, the fault
sweep and the paper-scale compute estimate.  Nothing in the package imports them."""
