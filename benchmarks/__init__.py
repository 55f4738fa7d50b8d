"""Benchmarks: dicomvault side by side with Orthanc on one machine, in one run.

Run `python -m benchmarks run --help`. Figures go to the terminal and, as JSON,
to benchmarks/results/. docs/performance.md records the figures and commands.
"""
