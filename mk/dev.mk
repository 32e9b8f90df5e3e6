# The local stack in docker-compose.yml (docs/local-development.md). Included by the Makefile,
# which defines SOURCE and QUANTIZATION.
#
#   make dev [SOURCE=...] [QUANTIZATION=int8]   build the cpu image and start the service, Redis,
#                                              Prometheus and Grafana; wait until every one is healthy
#   make dev-down [DEV_VOLUMES=1]               stop and remove the stack (DEV_VOLUMES=1: its data too)
#   make dev-logs                               follow the service's log
#
# Host ports: DEV_API_PORT (9527), DEV_PROMETHEUS_PORT (9090), DEV_GRAFANA_PORT (3000), read by
# docker-compose.yml from the environment (make passes command-line variables on); the defaults
# below only print the URLs. Needs Docker with the compose plugin (`docker compose version`).

DOCKER ?= docker
COMPOSE ?= $(DOCKER) compose
# The first start converts SOURCE inside the build (minutes for m2m100_418M), then loads the model.
DEV_WAIT_SECONDS ?= 600
DEV_VOLUMES ?=
DEV_API_PORT ?= 9527
DEV_PROMETHEUS_PORT ?= 9090
DEV_GRAFANA_PORT ?= 3000

.PHONY: dev dev-down dev-logs

dev: ## local stack (docker compose): service + Redis + Prometheus + Grafana, waits until healthy, prints the URLs
	@$(COMPOSE) version >/dev/null 2>&1 || { echo "make dev needs Docker with the compose plugin: '$(COMPOSE) version' failed" >&2; exit 2; }
	SOURCE=$(SOURCE) QUANTIZATION=$(QUANTIZATION) $(COMPOSE) up --build --detach --wait --wait-timeout $(DEV_WAIT_SECONDS)
	@echo
	@echo "API         http://127.0.0.1:$(DEV_API_PORT)/translation   (make health-check URL=http://127.0.0.1:$(DEV_API_PORT))"
	@echo "OpenAPI     http://127.0.0.1:$(DEV_API_PORT)/openapi.json"
	@echo "Prometheus  http://127.0.0.1:$(DEV_PROMETHEUS_PORT)   (targets: /targets, alert rules: /alerts)"
	@echo "Grafana     http://127.0.0.1:$(DEV_GRAFANA_PORT)   (the translation dashboard is the home page; admin login: admin, password GRAFANA_ADMIN_PASSWORD or admin)"
	@echo "Stop it with: make dev-down"

dev-down: ## stop the local stack (DEV_VOLUMES=1 also deletes the Prometheus and Grafana data)
	$(COMPOSE) down --remove-orphans $(if $(DEV_VOLUMES),--volumes)

dev-logs: ## follow the local stack's service log
	$(COMPOSE) logs --follow translation
