# Container image and Kubernetes targets (docs/deployment.md). Included by the Makefile, which
# defines PYTHON, SOURCE, QUANTIZATION, HOST and PORT.
#
#   make build [TAG=...]                      CPU image IMAGE:TAG (converts SOURCE at build time)
#   make build-gpu                            GPU image IMAGE:TAG-gpu (float16)
#   make push / push-gpu                      push them
#   make deploy [OVERLAY=cpu|gpu|cpu-full]    apply k8s/overlays/OVERLAY with IMAGE:TAG, wait
#   make rollback                             undo the last rollout
#   make health-check URL=https://...         /readyz + one real translation
#   make monitoring                           ServiceMonitor, alerts, dashboard, adapter rules
#   make k8s-validate                         render every overlay and validate it offline

SYSTEM_PYTHON ?= python3
DOCKER ?= docker
KUBECTL ?= kubectl
# The image name the manifests in k8s/ use; IMAGE replaces it at deploy time.
MANIFEST_IMAGE := ghcr.io/example-org/m2m100-ct2-service
IMAGE ?= $(MANIFEST_IMAGE)
# The tag CI pushes for a commit (docker/metadata-action type=sha): sha-<7 hex>.
TAG ?= sha-$(shell git rev-parse --short=7 HEAD 2>/dev/null || echo unknown)
GPU_QUANTIZATION ?= float16
OVERLAY ?= cpu
NAMESPACE ?= translation
DEPLOYMENT ?= translation
ROLLOUT_TIMEOUT ?= 15m
URL ?= http://127.0.0.1:$(PORT)
K8S_VERSION ?= 1.33
KUBERNETES_VALIDATE ?= $(dir $(PYTHON))kubernetes-validate
K8S_OVERLAYS := $(notdir $(wildcard k8s/overlays/*))
# GPU overlays run the -gpu image.
DEPLOY_TAG = $(TAG)$(if $(findstring gpu,$(OVERLAY)),-gpu)
DEPLOY_DIR = build/deploy/$(OVERLAY)

.PHONY: build build-gpu push push-gpu deploy rollback health-check monitoring k8s-validate

build: ## build the CPU image IMAGE:TAG (converts SOURCE with QUANTIZATION inside the build)
	$(DOCKER) build --target cpu --build-arg SOURCE=$(SOURCE) --build-arg QUANTIZATION=$(QUANTIZATION) -t $(IMAGE):$(TAG) .

build-gpu: ## build the GPU image IMAGE:TAG-gpu (GPU_QUANTIZATION=float16)
	$(DOCKER) build --target gpu --build-arg SOURCE=$(SOURCE) --build-arg QUANTIZATION=$(GPU_QUANTIZATION) -t $(IMAGE):$(TAG)-gpu .

push: ## push IMAGE:TAG
	$(DOCKER) push $(IMAGE):$(TAG)

push-gpu: ## push IMAGE:TAG-gpu
	$(DOCKER) push $(IMAGE):$(TAG)-gpu

# A throwaway kustomization on top of the overlay sets the image, so deploying never edits k8s/.
deploy: ## apply k8s/overlays/OVERLAY with IMAGE:TAG (-gpu for gpu overlays) and wait for the rollout
	@test -d k8s/overlays/$(OVERLAY) || { echo "no overlay k8s/overlays/$(OVERLAY) (have: $(K8S_OVERLAYS))" >&2; exit 2; }
	@mkdir -p $(DEPLOY_DIR)
	@printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' 'resources:' \
	  '  - ../../../k8s/overlays/$(OVERLAY)' 'images:' '  - name: $(MANIFEST_IMAGE)' \
	  '    newName: $(IMAGE)' '    newTag: "$(DEPLOY_TAG)"' > $(DEPLOY_DIR)/kustomization.yaml
	$(KUBECTL) apply -k $(DEPLOY_DIR)
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/$(DEPLOYMENT) --timeout=$(ROLLOUT_TIMEOUT)

rollback: ## roll the deployment back to its previous revision and wait
	$(KUBECTL) -n $(NAMESPACE) rollout undo deployment/$(DEPLOYMENT)
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/$(DEPLOYMENT) --timeout=$(ROLLOUT_TIMEOUT)

health-check: ## GET URL/readyz and translate one record; fails if either fails
	$(SYSTEM_PYTHON) scripts/health_check.py $(URL)

monitoring: ## apply the ServiceMonitor, PrometheusRule, Grafana dashboard and adapter rules
	$(KUBECTL) apply -k k8s/overlays/monitoring

k8s-validate: ## render every overlay and validate it (kubernetes-validate --strict, K8S_VERSION)
	@set -e; for overlay in $(K8S_OVERLAYS); do \
	  echo "k8s/overlays/$$overlay"; \
	  $(KUBECTL) kustomize k8s/overlays/$$overlay | $(KUBERNETES_VALIDATE) --strict --quiet -k $(K8S_VERSION) -; \
	done
