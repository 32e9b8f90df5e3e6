# Container image and Kubernetes targets (docs/deployment.md). Included by the Makefile, which
# defines PYTHON, SOURCE, QUANTIZATION, HOST and PORT.
#
#   make build [TAG=...]                      CPU image IMAGE:TAG (converts SOURCE at build time)
#   make build-gpu                            GPU image IMAGE:TAG-gpu (float16)
#   make push / push-gpu                      push them
#   make deploy [OVERLAY=cpu|gpu|dev|...]     apply k8s/overlays/OVERLAY with IMAGE:TAG (-gpu when its pods
#                                             request a GPU), wait for the rollout
#   make rollback                             undo the last rollout
#   make health-check URL=https://...         one real translation through the public routes, and
#                                             /languages (TRANSLATION_API_KEY when keys are on)
#   make monitoring                           ServiceMonitor, alerts, dashboard, adapter rules
#   make k8s-validate                         render every kustomization under k8s/, validate every object offline
#                                             (built-in kinds and custom resources, none skipped)
#   make cluster-addons                       the cluster add-ons at pinned versions (helmfile), then the ClusterIssuers

SYSTEM_PYTHON ?= python3
DOCKER ?= docker
KUBECTL ?= kubectl
# Renders an overlay (to tell GPU overlays apart); not $(KUBECTL), which tests replace with a stub.
KUSTOMIZE ?= kubectl kustomize
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
# Custom resources are validated against the JSON schemas of their CRDs, vendored here (k8s/schemas/README.md).
K8S_SCHEMAS ?= k8s/schemas
# The cluster add-ons (k8s/cluster/addons): helmfile v1 and helm 3 or 4. HELMFILE_ARGS is what helmfile does:
# `apply` shows a diff first (needs the helm-diff plugin); `--state-values-set istio.enabled=true sync` adds Istio.
HELMFILE ?= helmfile
CLUSTER_ADDONS ?= k8s/cluster/addons/helmfile.yaml
HELMFILE_ARGS ?= sync
CLUSTER_ISSUERS ?= k8s/cluster/addons/cluster-issuers
K8S_OVERLAYS := $(notdir $(wildcard k8s/overlays/*))
HEALTH_CHECK_ARGS ?=
# GPU overlays run the -gpu image. An overlay is a GPU one when the pods it renders request
# nvidia.com/gpu, whatever its name: gpu itself, and the environments built on it (staging, prod).
# Expanded only by the deploy recipe (make -n deploy shows the tag it would use).
overlay_requests_gpu = $(shell $(KUSTOMIZE) k8s/overlays/$(1) 2>/dev/null | grep -Eq '^ +nvidia\.com/gpu: ' && echo yes)
DEPLOY_TAG = $(TAG)$(if $(call overlay_requests_gpu,$(OVERLAY)),-gpu)
DEPLOY_DIR = build/deploy/$(OVERLAY)

.PHONY: build build-gpu push push-gpu deploy rollback health-check monitoring k8s-validate cluster-addons

build: ## build the CPU image IMAGE:TAG (converts SOURCE with QUANTIZATION inside the build)
	$(DOCKER) build --target cpu --build-arg SOURCE=$(SOURCE) --build-arg QUANTIZATION=$(QUANTIZATION) -t $(IMAGE):$(TAG) .

build-gpu: ## build the GPU image IMAGE:TAG-gpu (GPU_QUANTIZATION=float16)
	$(DOCKER) build --target gpu --build-arg SOURCE=$(SOURCE) --build-arg QUANTIZATION=$(GPU_QUANTIZATION) -t $(IMAGE):$(TAG)-gpu .

push: ## push IMAGE:TAG
	$(DOCKER) push $(IMAGE):$(TAG)

push-gpu: ## push IMAGE:TAG-gpu
	$(DOCKER) push $(IMAGE):$(TAG)-gpu

# A throwaway kustomization on top of the overlay sets the image, so deploying never edits k8s/.
deploy: ## apply k8s/overlays/OVERLAY with IMAGE:TAG (-gpu for overlays that request GPUs) and wait for the rollout
	$(if $(and $(filter 1,$(words $(OVERLAY))),$(filter $(OVERLAY),$(K8S_OVERLAYS))),,$(error no overlay k8s/overlays/$(OVERLAY) (have: $(K8S_OVERLAYS))))
	@$(KUSTOMIZE) k8s/overlays/$(OVERLAY) >/dev/null || { echo "k8s/overlays/$(OVERLAY) does not render with $(KUSTOMIZE)" >&2; exit 2; }
	@mkdir -p $(DEPLOY_DIR)
	@printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' 'resources:' \
	  '  - ../../../k8s/overlays/$(OVERLAY)' 'images:' '  - name: $(MANIFEST_IMAGE)' \
	  '    newName: $(IMAGE)' '    newTag: "$(DEPLOY_TAG)"' > $(DEPLOY_DIR)/kustomization.yaml
	$(KUBECTL) apply -k $(DEPLOY_DIR)
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/$(DEPLOYMENT) --timeout=$(ROLLOUT_TIMEOUT)

rollback: ## roll the deployment back to its previous revision and wait
	$(KUBECTL) -n $(NAMESPACE) rollout undo deployment/$(DEPLOYMENT)
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/$(DEPLOYMENT) --timeout=$(ROLLOUT_TIMEOUT)

health-check: ## POST URL/translation until ready, check the translation and /languages (TRANSLATION_API_KEY if keys are on)
	$(SYSTEM_PYTHON) scripts/health_check.py $(URL) $(HEALTH_CHECK_ARGS)

monitoring: ## apply the ServiceMonitor, PrometheusRule, Grafana dashboard and adapter rules
	$(KUBECTL) apply -k k8s/overlays/monitoring

k8s-validate: ## render every kustomization under k8s/ and validate every object strictly: API kinds (K8S_VERSION) and CRDs (K8S_SCHEMAS)
	$(PYTHON) scripts/validate_manifests.py --kubernetes-version $(K8S_VERSION) --schemas $(K8S_SCHEMAS) --kustomize '$(KUBECTL) kustomize' k8s

cluster-addons: ## install or upgrade the cluster add-ons at their pinned versions (HELMFILE_ARGS=sync), then the ClusterIssuers
	$(HELMFILE) --file $(CLUSTER_ADDONS) $(HELMFILE_ARGS)
	$(KUBECTL) apply -k $(CLUSTER_ISSUERS)
