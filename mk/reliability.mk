# Reliability (docs/reliability.md). Included by the Makefile, which defines PYTHON and venv-dev.
#
#   make reliability [SOAK_SECONDS=60] [RELIABILITY_ARGS=...]
#       on the toy model on loopback, each bounded: schemathesis against /openapi.json, the hostile-input
#       set, overload (wrk), Redis killed mid-load, SIGTERM under load, the field cases (below), a short soak;
#       writes docs/reliability.md and reports/reliability/results.json (~4.5 minutes on 2 cores); exit 1 when
#       a target is missed (the report says which)
#   make reliability-field [RELIABILITY_ARGS=...]
#       the field cases alone (~2 minutes): behind nginx with pooled upstream keep-alive (client B beside
#       client A's flood), stalled bodies, forged X-Forwarded-For, pipelining, guessed API keys, idle
#       connections under a 1,024 open-file limit, SIGHUP under load -> reports/reliability/field.md and
#       field.json (docs/reliability.md is written by the whole run only)
#   make soak [SOAK_SECONDS=600] [SOAK_RATE=200]
#       the soak alone: a steady mixed load at a fixed rate; failures, p99 drift, RSS growth
#       -> reports/reliability/soak.md and soak.json

SOAK_SECONDS ?=
SOAK_RATE ?= 200
RELIABILITY_ARGS ?=

.PHONY: reliability reliability-field soak

reliability: venv-dev ## schemathesis, hostile inputs, overload, Redis kill, SIGTERM, field cases, soak (SOAK_SECONDS=60) -> docs/reliability.md
	./scripts/install_system_deps.sh
	$(PYTHON) -m loadtest.reliability --soak-seconds $(or $(SOAK_SECONDS),60) --soak-rate $(SOAK_RATE) \
		--command "make reliability$(if $(SOAK_SECONDS), SOAK_SECONDS=$(SOAK_SECONDS))" $(RELIABILITY_ARGS)

reliability-field: venv-dev ## the field cases: nginx, stalled bodies, forged X-Forwarded-For, pipelining, key guessing, fds, SIGHUP
	./scripts/install_system_deps.sh
	$(PYTHON) -m loadtest.reliability --steps field --output reports/reliability/field.md \
		--results reports/reliability/field.json --command "make reliability-field" $(RELIABILITY_ARGS)

soak: venv-dev ## a steady mixed load for SOAK_SECONDS (default 600): failures, p99 drift, RSS growth -> reports/reliability/soak.md
	$(PYTHON) -m loadtest.reliability --steps soak --soak-seconds $(or $(SOAK_SECONDS),600) --soak-rate $(SOAK_RATE) \
		--output reports/reliability/soak.md --results reports/reliability/soak.json --command "make soak" $(RELIABILITY_ARGS)
