"""The benchmark's parts, helpers and report (run by bench/run.py)."""
