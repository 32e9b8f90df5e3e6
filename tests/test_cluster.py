"""The GPU cluster (k8s/cluster/), offline: the eksctl ClusterConfig against eksctl's own schema, the node
groups against what the gpu-based overlays schedule on (taint, labels, sizes), the cluster autoscaler's tags
and manifests against the node groups, and the AWS permissions against the ServiceAccounts that use them.

No cloud here: nothing proves that AWS accepts the file or that spot capacity exists (docs/deployment.md).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from functools import cache

import jsonschema
import pytest
import yaml

from tests.k8s_helpers import (
    GPU_OVERLAYS,
    K8S,
    KUBERNETES_VERSION,
    RECOMMENDED_LABELS,
    ROOT,
    config_map,
    one,
    quantity,
    render,
    render_dir,
    server_container,
    server_deployment,
    tolerates,
    validate_strictly,
    workloads,
)

CLUSTER = K8S / "cluster" / "cluster.yaml"
AUTOSCALER = K8S / "cluster" / "autoscaler"
# eksctl's JSON schema for ClusterConfig v1alpha5, from eksctl v0.230.0
# (pkg/apis/eksctl.io/v1alpha5/assets/schema.json): unknown fields are errors.
EKSCTL_SCHEMA = ROOT / "tests" / "fixtures" / "eksctl-v0.230.0-schema.json"
TAG = "k8s.io/cluster-autoscaler/"
NODE_TEMPLATE = TAG + "node-template/"
# vCPUs, memory (MiB) and NVIDIA GPUs per instance type: the cluster autoscaler's own table
# (cluster-autoscaler/cloudprovider/aws/ec2_instance_types.go), which is also what it assumes for a node
# group at zero nodes. Add a type here before using it in cluster.yaml.
INSTANCE_TYPES = {
    "g4dn.2xlarge": (8, 32768, 1),
    "g5.2xlarge": (8, 32768, 1),
    "g6.2xlarge": (8, 32768, 1),
    "g5.xlarge": (4, 16384, 1),
    "g6.xlarge": (4, 16384, 1),
    "m6i.xlarge": (4, 16384, 0),
}
# Requests of the EKS add-on DaemonSets on every node (aws-node, kube-proxy, eks-pod-identity-agent, the NVIDIA
# device plugin): an upper bound, as they are not rendered here. Fluent Bit's come from our manifests.
ADDON_DAEMONSETS_CPU = 0.25
ADDON_DAEMONSETS_MEMORY = 256 * 2**20


@cache
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def node_group(name: str) -> dict:
    (group,) = [g for g in cluster()["managedNodeGroups"] if g["name"] == name]
    return group


def gpu_group() -> dict:
    (group,) = [g for g in cluster()["managedNodeGroups"] if g.get("taints")]
    return group


def allocatable(instance_type: str) -> tuple[float, float]:
    """What the kubelet of an EKS node offers pods (CPUs, bytes): EKS' kube-reserved (CPU: 6% of the first core,
    1% of the second, 0.5% of the next two, 0.25% of the rest; memory: 255 MiB + 11 MiB per pod, 110 pods at
    most) and the 100 MiB hard eviction threshold."""
    cpus, memory_mib, _ = INSTANCE_TYPES[instance_type]
    shares = [0.06, 0.01, 0.005, 0.005] + [0.0025] * max(0, cpus - 4)
    reserved_cpu = sum(shares[:cpus])
    reserved_mib = 255 + 11 * 110 + 100
    return cpus - reserved_cpu, (memory_mib - reserved_mib) * 2**20


def pod_requests(docs) -> tuple[float, float]:
    requests = server_container(docs)["resources"]["requests"]
    return quantity(requests["cpu"]), quantity(requests["memory"])


def daemonset_requests(docs) -> tuple[float, float]:
    cpu = memory = 0.0
    for workload in workloads(docs):
        if workload["kind"] == "DaemonSet":
            for container in workload["spec"]["template"]["spec"]["containers"]:
                requests = container.get("resources", {}).get("requests", {})
                cpu += quantity(requests.get("cpu", 0))
                memory += quantity(requests.get("memory", 0))
    return cpu + ADDON_DAEMONSETS_CPU, memory + ADDON_DAEMONSETS_MEMORY


def autoscaler_deployment() -> dict:
    return one(render_dir(AUTOSCALER), "Deployment", "cluster-autoscaler")


def autoscaler_flags() -> dict[str, str]:
    (container,) = autoscaler_deployment()["spec"]["template"]["spec"]["containers"]
    flags = {}
    for arg in container["command"][1:]:
        name, _, value = arg.removeprefix("--").partition("=")
        flags[name] = value or "true"
    return flags


def pod_identity(namespace: str, service_account: str) -> dict:
    (association,) = [
        a for a in cluster()["iam"]["podIdentityAssociations"]
        if (a["namespace"], a["serviceAccountName"]) == (namespace, service_account)
    ]
    return association


# --- the ClusterConfig ---------------------------------------------------------------------------


def test_cluster_config_follows_eksctl_schema():
    schema = json.loads(EKSCTL_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(cluster())]
    assert not errors, errors
    assert (cluster()["apiVersion"], cluster()["kind"]) == ("eksctl.io/v1alpha5", "ClusterConfig")
    # The schema is strict: a misspelt field fails, so passing above means something.
    typo = copy.deepcopy(cluster())
    typo["managedNodeGroups"][0]["minsize"] = 0
    assert not validator.is_valid(typo)
    assert cluster()["metadata"]["version"] == KUBERNETES_VERSION, "the version the manifests are validated against"


def test_node_groups():
    system, gpu = node_group("system"), gpu_group()
    # The system group: on-demand, always on, untainted (CoreDNS, the autoscaler, ingress, Redis).
    assert not system.get("spot") and not system.get("taints") and system["minSize"] >= 2
    # The GPU group: spot, several instance types, from zero.
    assert gpu["spot"] is True and gpu["minSize"] == 0 and gpu["desiredCapacity"] == 0 and gpu["maxSize"] >= 4
    assert len(gpu["instanceTypes"]) >= 3 and len(set(gpu["instanceTypes"])) == len(gpu["instanceTypes"])
    shapes = {INSTANCE_TYPES[t] for t in gpu["instanceTypes"]}
    assert len(shapes) == 1, "one shape per group: the autoscaler sizes an unseen node from the first type"
    assert next(iter(shapes))[2] >= 1, "NVIDIA GPU instance types"
    # eksctl installs the NVIDIA device plugin for GPU instance types on AL2 / AL2023 only.
    assert gpu["amiFamily"] == "AmazonLinux2023"
    assert all(g.get("privateNetworking") for g in cluster()["managedNodeGroups"])


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_taint_is_exactly_what_the_gpu_pods_tolerate(overlay):
    (taint,) = gpu_group()["taints"]
    assert taint == {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
    tolerations = server_deployment(render(overlay))["spec"]["template"]["spec"]["tolerations"]
    assert tolerates(tolerations, taint)
    # Nothing broader: the pods tolerate this key and effect only.
    assert all((t["key"], t["effect"]) == (taint["key"], taint["effect"]) for t in tolerations)


def test_cpu_pods_stay_off_the_gpu_nodes():
    (taint,) = gpu_group()["taints"]
    for overlay in ("cpu", "cpu-full", "dev"):
        spec = server_deployment(render(overlay))["spec"]["template"]["spec"]
        assert not tolerates(spec.get("tolerations", []), taint), overlay


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_pods_select_labels_only_the_gpu_group_sets(overlay):
    selector = server_deployment(render(overlay))["spec"]["template"]["spec"]["nodeSelector"]
    assert selector
    assert selector.items() <= gpu_group()["labels"].items()
    assert not selector.items() <= node_group("system")["labels"].items()


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_every_gpu_instance_type_holds_a_translation_pod(overlay):
    docs = render(overlay)
    cpu, memory = pod_requests(docs)
    daemon_cpu, daemon_memory = daemonset_requests(docs)
    gpus = quantity(server_container(docs)["resources"]["limits"]["nvidia.com/gpu"])
    for instance_type in gpu_group()["instanceTypes"]:
        free_cpu, free_memory = allocatable(instance_type)
        assert cpu + daemon_cpu <= free_cpu and memory + daemon_memory <= free_memory, instance_type
        assert INSTANCE_TYPES[instance_type][2] >= gpus, instance_type
    # Why not the xlarge sizes (cluster.yaml): 4 vCPUs can't hold a 4-CPU pod beside the node's own share.
    for too_small in ("g5.xlarge", "g6.xlarge"):
        free_cpu, free_memory = allocatable(too_small)
        assert cpu + daemon_cpu > free_cpu or memory + daemon_memory > free_memory


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_gpu_group_has_room_for_the_largest_rollout(overlay):
    """Each pod takes a whole GPU node: at maxReplicas, a rollout's surge pod needs one more."""
    docs = render(overlay)
    hpa = one(docs, "HorizontalPodAutoscaler", "translation")
    surge = server_deployment(docs)["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    assert hpa["spec"]["maxReplicas"] + surge <= gpu_group()["maxSize"]


# --- the cluster autoscaler ----------------------------------------------------------------------


def test_autoscaler_tags_describe_the_gpu_group():
    """At zero nodes the autoscaler knows a group only by its Auto Scaling group's tags: they must state the
    labels and the taint the nodes will have, in the autoscaler's formats, and reach the ASG."""
    gpu = gpu_group()
    tags = gpu["tags"]
    assert gpu["propagateASGTags"] is True, "managed node group tags reach the ASG only when propagated"
    labels = {k.removeprefix(NODE_TEMPLATE + "label/"): v for k, v in tags.items() if k.startswith(NODE_TEMPLATE + "label/")}
    assert labels == gpu["labels"]
    taints = {k.removeprefix(NODE_TEMPLATE + "taint/"): v for k, v in tags.items() if k.startswith(NODE_TEMPLATE + "taint/")}
    # value:effect, as the autoscaler parses it ((.*):(NoSchedule|NoExecute|PreferNoSchedule)).
    assert taints == {t["key"]: f"{t['value']}:{t['effect']}" for t in gpu["taints"]}
    assert all(re.fullmatch(r"(.*):(?:NoSchedule|NoExecute|PreferNoSchedule)", v) for v in taints.values())
    gpus = INSTANCE_TYPES[gpu["instanceTypes"][0]][2]
    assert tags[NODE_TEMPLATE + "resources/nvidia.com/gpu"] == str(gpus)
    assert tags[TAG + "enabled"] == "true" and tags[TAG + cluster()["metadata"]["name"]] == "owned"


def test_autoscaler_kustomization_renders_and_validates():
    docs = render_dir(AUTOSCALER)
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding", "Deployment"}
    for doc in docs:
        validate_strictly(doc, f"k8s/cluster/autoscaler: {doc['kind']}/{doc['metadata']['name']}")
        assert set(RECOMMENDED_LABELS) <= set(doc["metadata"]["labels"]), doc["metadata"]["name"]
    template = autoscaler_deployment()["spec"]["template"]
    assert set(RECOMMENDED_LABELS) <= set(template["metadata"]["labels"])
    assert autoscaler_deployment()["spec"]["selector"] == {"matchLabels": {"app": "cluster-autoscaler"}}
    spec = template["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True and container["securityContext"]["readOnlyRootFilesystem"] is True
    assert not any("hostPath" in v for v in spec.get("volumes", []))


def test_autoscaler_discovers_this_cluster_and_can_scale_its_pods_down():
    flags = autoscaler_flags()
    assert flags["cloud-provider"] == "aws"
    kind, _, keys = flags["node-group-auto-discovery"].partition(":tag=")
    assert kind == "asg"
    keys = keys.split(",")
    assert keys == [TAG + "enabled", TAG + cluster()["metadata"]["name"]], "names the cluster"
    assert set(keys) <= set(gpu_group()["tags"]), "the GPU group carries the tags it discovers by"
    # The translation pods have an emptyDir (/tmp): with the default, their nodes would never scale down.
    pod_volumes = server_deployment(render("prod"))["spec"]["template"]["spec"]["volumes"]
    assert any("emptyDir" in v for v in pod_volumes) and flags["skip-nodes-with-local-storage"] == "false"


def test_autoscaler_runs_on_the_system_nodes_with_this_cluster_s_version_and_identity():
    deployment = autoscaler_deployment()
    spec = deployment["spec"]["template"]["spec"]
    assert spec["nodeSelector"].items() <= node_group("system")["labels"].items()
    assert not spec["nodeSelector"].items() <= gpu_group()["labels"].items()
    (container,) = spec["containers"]
    version = re.fullmatch(r"registry\.k8s\.io/autoscaling/cluster-autoscaler:v(\d+\.\d+)\.(\d+)", container["image"])
    assert version and version.group(1) == cluster()["metadata"]["version"], "the autoscaler's minor = the cluster's"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == container["image"].rsplit(":v", 1)[1]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AWS_REGION"] == cluster()["metadata"]["region"]
    # AWS permissions: the Pod Identity association names this ServiceAccount.
    namespace, account = deployment["metadata"]["namespace"], spec["serviceAccountName"]
    assert pod_identity(namespace, account)["wellKnownPolicies"] == {"autoScaler": True}
    assert any(a["name"] == "eks-pod-identity-agent" for a in cluster()["addons"])
    docs = render_dir(AUTOSCALER)
    for binding in ("ClusterRoleBinding", "RoleBinding"):
        assert one(docs, binding)["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]


# --- log shipping's AWS side ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_fluent_bit_may_write_where_the_environment_ships_logs(overlay):
    docs = render(overlay)
    daemonset = one(docs, "DaemonSet", "fluent-bit")
    association = pod_identity(daemonset["metadata"]["namespace"], daemonset["spec"]["template"]["spec"]["serviceAccountName"])
    settings = config_map(docs, "fluent-bit-env")["data"]
    assert settings["AWS_REGION"] == cluster()["metadata"]["region"]
    (statement,) = association["permissionPolicy"]["Statement"]
    assert statement["Effect"] == "Allow"
    # PutLogEvents into its streams; creating the group and setting its retention (auto_create_group,
    # log_retention_days in output-cloudwatch.yaml).
    assert {"logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:CreateLogStream", "logs:PutLogEvents"} <= set(statement["Action"])
    group = settings["LOG_GROUP_NAME"]
    arns = (f"arn:aws:logs:{settings['AWS_REGION']}:123456789012:log-group:{group}",
            f"arn:aws:logs:{settings['AWS_REGION']}:123456789012:log-group:{group}:log-stream:translation-abc.server")
    for arn in arns:
        assert any(fnmatch.fnmatchcase(arn, resource) for resource in statement["Resource"]), arn
    outside = f"arn:aws:logs:{settings['AWS_REGION']}:123456789012:log-group:/aws/eks/other"
    assert not any(fnmatch.fnmatchcase(outside, resource) for resource in statement["Resource"])
