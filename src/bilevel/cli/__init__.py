"""The command line and the harness it drives: run configurations, sweeps, the result layout
on disk, tables and plots. Nothing in the library imports it."""
