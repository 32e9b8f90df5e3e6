"""Benchmarks of the engine and the service: `make bench` (full, docs/benchmarks.md) or `make bench QUICK=1`.

    python -m loadtest.bench [--quick] [--device cpu|cuda] [--output FILE.md] ...

config.py says what to measure and where, run.py measures, results.py holds the figures as types (results.json is
their saved form), report.py writes the Markdown and the plots; engines.py (CTranslate2, transformers),
server.py (the service as a process) and client.py (a raw asyncio HTTP load client) are the tools.
"""
