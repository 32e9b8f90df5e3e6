"""Reliability under hostile and failing conditions (`make reliability`, `make soak`; docs/reliability.md).

One module per step (spec, hostile, overload, redis_kill, sigterm, soak), each a `run(...)` that starts what
it needs on 127.0.0.1 (loadtest/bench/server.py's Service), bounds its load in count and time, and returns
its figures; report.py turns them into docs/reliability.md, __main__.py runs them in order.
"""
