"""Load tests (locustfile.py, slo.py) and benchmarks (bench/) for the translation service."""
