# The Helm chart deploy/helm/m2m100-translation (docs/helm.md). Included by the Makefile, which defines PYTHON.
#
#   make helm-lint                                  helm lint --strict with the default values and every ci/*.yaml
#   make helm-template [HELM_VALUES=...]            render the chart to stdout (HELM_RELEASE, HELM_NAMESPACE, HELM_ARGS)
#   make helm-validate                              render every values file and validate every object, custom resources
#                                                   included (scripts/validate_manifests.py, as make k8s-validate)
#   make helm-sync                                  copy the component files the chart carries (files/) from k8s/components
#
# tests/test_helm.py runs the same checks and compares every rendering with `kubectl kustomize` of its overlay.

# The official helm build that the helm-binary package (requirements/dev.txt) installs next to the venv's Python.
HELM ?= $(dir $(PYTHON))helm
HELM_CHART := deploy/helm/m2m100-translation
# Values files, paths from the repository root (several: space-separated, later ones win).
HELM_VALUES ?=
HELM_RELEASE ?= translation
HELM_NAMESPACE ?= translation
HELM_ARGS ?=
HELM_KUBE_VERSION ?= 1.33
HELM_CI_VALUES := $(sort $(wildcard $(HELM_CHART)/ci/*.yaml))
# The chart's copies of component files: chart file = k8s file.
HELM_COPIES := \
	files/alerts.rules.yml=k8s/components/monitoring/alerts.rules.yml \
	files/dashboard.json=k8s/components/monitoring/dashboard.json \
	files/adapter-rules.yaml=k8s/components/monitoring/adapter-rules.yaml \
	files/fluent-bit.yaml=k8s/components/logging/fluent-bit.yaml \
	files/output-cloudwatch.yaml=k8s/components/logging/output-cloudwatch.yaml \
	files/output-loki.yaml=k8s/components/logging/loki/output.yaml \
	files/output-elasticsearch.yaml=k8s/components/logging/elasticsearch/output.yaml

# Validates the objects of a rendering on stdin as `make k8s-validate` validates a kustomization's
# (scripts/validate_manifests.py: built-in kinds strictly against the Kubernetes API schemas, custom resources such
# as the ServiceMonitor and PrometheusRule against k8s/schemas); exit status 1 if any is invalid. Argument: the
# Kubernetes version.
define HELM_VALIDATE_PY
import sys, yaml
from scripts.validate_manifests import validate_object
docs = [doc for doc in yaml.safe_load_all(sys.stdin) if doc]
errors = ["%s/%s: %s" % (doc.get("kind"), doc.get("metadata", {}).get("name"), error) for doc in docs for error in validate_object(doc, sys.argv[1])]
print("  %d objects, %s" % (len(docs), "%d INVALID" % len(errors) if errors else "valid"))
if errors: print("  " + "\n  ".join(errors), file=sys.stderr)
sys.exit(1 if errors else 0)
endef
export HELM_VALIDATE_PY

.PHONY: helm-lint helm-template helm-validate helm-sync

helm-lint: ## helm lint --strict the chart with its default values and with every ci/*-values.yaml
	@set -e; for values in "" $(HELM_CI_VALUES); do \
	  echo "helm lint --strict $(HELM_CHART) $${values:+--values $$values}"; \
	  $(HELM) lint --strict --quiet $(HELM_CHART) --kube-version $(HELM_KUBE_VERSION) $${values:+--values $$values}; \
	done

helm-template: ## render the chart to stdout (HELM_VALUES=files HELM_RELEASE=translation HELM_NAMESPACE=translation HELM_ARGS=--set ...)
	@$(HELM) template $(HELM_RELEASE) $(HELM_CHART) --namespace $(HELM_NAMESPACE) --kube-version $(HELM_KUBE_VERSION) \
	  $(addprefix --values ,$(HELM_VALUES)) $(HELM_ARGS)

helm-validate: ## render the chart with every values file and validate every object strictly, custom resources included
	@set -e -o pipefail; for values in "" $(HELM_CI_VALUES); do \
	  echo "helm template $${values:-(default values)}"; \
	  $(HELM) template $(HELM_RELEASE) $(HELM_CHART) --namespace $(HELM_NAMESPACE) --kube-version $(HELM_KUBE_VERSION) \
	    $${values:+--values $$values} | $(PYTHON) -c "$$HELM_VALIDATE_PY" $(HELM_KUBE_VERSION); \
	done

helm-sync: ## copy the alert rules, dashboard, adapter rules and Fluent Bit files from k8s/components into the chart
	@$(foreach pair,$(HELM_COPIES),cp $(word 2,$(subst =, ,$(pair))) $(HELM_CHART)/$(word 1,$(subst =, ,$(pair))) &&) true
