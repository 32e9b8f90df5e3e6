# The image smoke test: what CI runs between building an image and pushing it (docs/ci-cd.md, "The smoke
# test"). Included by the Makefile, which defines SYSTEM_PYTHON; IMAGE and TAG are mk/deploy.mk's, the name
# `make build` tags (the GPU image is TAG-gpu).
#
#   make smoke-image [IMAGE=...] [TAG=...] [SMOKE_PORT=9527] [SMOKE_WAIT=300] [SMOKE_ARGS='--gpus all']
#       start IMAGE:TAG as a pod runs it (read-only root, no capabilities) on 127.0.0.1:SMOKE_PORT, wait up to
#       SMOKE_WAIT seconds for /readyz, health-check a real translation and /languages, then the image's
#       HEALTHCHECK and a clean stop. An image built for CUDA, without --gpus: it must refuse to start (no
#       GPU), then pass the same checks on the CPU. Needs Docker and curl (scripts/smoke_image.sh).

DOCKER ?= docker
SMOKE_PORT ?= 9527
SMOKE_WAIT ?= 300
SMOKE_ARGS ?=

.PHONY: smoke-image

smoke-image: ## run IMAGE:TAG like a pod: /readyz, a real translation, /languages, clean stop (CUDA images: refuse without a GPU, serve on CPU)
	DOCKER='$(DOCKER)' PYTHON='$(SYSTEM_PYTHON)' ./scripts/smoke_image.sh --port $(SMOKE_PORT) --wait $(SMOKE_WAIT) $(SMOKE_ARGS) $(IMAGE):$(TAG)
