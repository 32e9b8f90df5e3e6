"""The GitHub workflows and the Make targets they call, offline: the workflows validate against the
workflow schema, every `run:` script parses, the lint job runs `make lint`, the deploy jobs go to the
environments dev, staging and prod in that order of trust, and `make deploy` picks the image each
environment's overlay needs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from loadtest.paths import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
DEPLOY = WORKFLOWS / "deploy.yml"
DOCS = ROOT / "docs" / "ci-cd.md"
ENVIRONMENTS = ("dev", "staging", "prod")
# Which environments get the GPU image: their overlays build on k8s/overlays/gpu.
GPU_ENVIRONMENTS = {"staging", "prod"}
EXPRESSION = re.compile(r"\$\{\{.*?\}\}")


@cache
def workflow(path: Path) -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); put it back.
    document = yaml.safe_load(path.read_text())
    if True in document:
        document["on"] = document.pop(True)
    return document


def jobs(path: Path) -> dict:
    return workflow(path)["jobs"]


def run_scripts(path: Path) -> list[str]:
    return [step["run"] for job in jobs(path).values() for step in job.get("steps", []) if "run" in step]


def make_calls(path: Path) -> list[list[str]]:
    """The words after `make` in every run script of a workflow."""
    calls = []
    for script in run_scripts(path):
        for match in re.finditer(r"(?:^|[;&|]\s*|\s)make\s+([^\n;&|]+)", EXPRESSION.sub("EXPR", script)):
            calls.append(match.group(1).split())
    return calls


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)


def deploy_callers() -> dict[str, tuple[str, dict]]:
    """environment -> (job id in ci.yml, job) for the jobs that call deploy.yml."""
    callers = {}
    for job_id, job in jobs(CI).items():
        if job.get("uses") == "./.github/workflows/deploy.yml":
            callers[job["with"]["environment"]] = (job_id, job)
    return callers


# --- the workflow files ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda path: path.name)
def test_workflow_follows_the_github_workflow_schema(path):
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert workflow(path)["on"] and jobs(path)


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda path: path.name)
def test_every_run_script_parses_as_bash(path):
    bash = shutil.which("bash")
    for script in run_scripts(path):
        # Expressions are substituted before the shell sees the script: a plain word stands in for each.
        text = EXPRESSION.sub("EXPR", script)
        result = subprocess.run([bash, "-n"], input=text, capture_output=True, text=True, check=False, timeout=10)
        assert result.returncode == 0, f"{path.name}: {result.stderr}\n{script}"


def test_lint_job_runs_make_lint_and_gates_the_image():
    lint = jobs(CI)["lint"]
    assert [step["run"] for step in lint["steps"] if "run" in step] == ["make lint"]
    assert set(jobs(CI)["image"]["needs"]) == {"test", "lint"}
    printed = make("-n", "lint").stdout
    assert "-m ruff check ." in printed and "-m mypy service convert" in printed


def test_every_make_target_the_workflows_call_exists():
    documented = {line.split("\t")[0] for line in make("help").stdout.splitlines()}
    called = set()
    for path in WORKFLOWS.glob("*.yml"):
        for words in make_calls(path):
            called |= {word for word in words if "=" not in word and not word.startswith("-")}
    assert called == {"test", "lint", "deploy", "health-check", "rollback"}
    assert called <= documented, f"not in make help: {called - documented}"
    for target in called - {"deploy"}:  # deploy: per environment, below
        result = make("-n", target, "URL=https://translation.example.com")
        assert result.returncode == 0, f"make -n {target}: {result.stderr}"


# --- deployments ----------------------------------------------------------------------------------


def test_deploys_go_dev_on_main_then_staging_and_prod_on_tags():
    callers = deploy_callers()
    assert set(callers) == set(ENVIRONMENTS)
    _, dev = callers["dev"]
    staging_id, staging = callers["staging"]
    _, prod = callers["prod"]
    assert dev["needs"] == "image" and staging["needs"] == "image"
    assert prod["needs"] == staging_id, "prod deploys only after staging deployed and passed its check"
    assert "github.ref == 'refs/heads/main'" in dev["if"]
    for job in (staging, prod):
        assert "startsWith(github.ref, 'refs/tags/v')" in job["if"]
    for _, job in callers.values():
        assert job["secrets"] == "inherit" and job["permissions"]["id-token"] == "write"
    # The workflow triggers on exactly those refs.
    push = workflow(CI)["on"]["push"]
    assert push["branches"] == ["main"] and push["tags"] == ["v*"]


def test_the_deploy_workflow_runs_in_the_environment_and_uses_the_make_targets():
    (job,) = jobs(DEPLOY).values()
    assert job["environment"]["name"] == "${{ inputs.environment }}"
    assert job["environment"]["url"] == "${{ vars.PUBLIC_URL }}"
    assert job["concurrency"]["cancel-in-progress"] is False
    triggers = workflow(DEPLOY)["on"]
    assert triggers["workflow_call"]["inputs"]["environment"]["required"] is True
    assert triggers["workflow_dispatch"]["inputs"]["environment"]["options"] == list(ENVIRONMENTS)
    steps = job["steps"]
    runs = [step.get("run", "") for step in steps]
    deploy = next(i for i, run in enumerate(runs) if run.startswith("make deploy "))
    health = next(i for i, run in enumerate(runs) if run.startswith("make health-check "))
    assert deploy < health
    assert 'OVERLAY="$OVERLAY"' in runs[deploy] and "TAG=" in runs[deploy]
    assert job["env"]["OVERLAY"] == "${{ inputs.environment }}"
    assert 'URL="$PUBLIC_URL"' in runs[health] and job["env"]["PUBLIC_URL"] == "${{ vars.PUBLIC_URL }}"
    # Kubernetes credentials through OIDC to AWS, before the deploy.
    aws = next(i for i, step in enumerate(steps) if step.get("uses", "").startswith("aws-actions/configure-aws-credentials@"))
    kubeconfig = next(i for i, run in enumerate(runs) if run.startswith("aws eks update-kubeconfig"))
    assert aws < kubeconfig < deploy and job["permissions"]["id-token"] == "write"
    assert steps[aws]["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"
    # A failed rollout or health check rolls back.
    assert runs[-1] == "make rollback" and "failure()" in steps[-1]["if"]


def test_the_health_check_gets_the_api_key_the_script_reads():
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "health_check.py"))
    (job,) = jobs(DEPLOY).values()
    (step,) = [step for step in job["steps"] if step.get("run", "").startswith("make health-check")]
    assert step["env"] == {script["DEFAULT_KEY_ENV"]: "${{ secrets.TRANSLATION_API_KEY }}"}


def test_the_deployed_tag_is_the_one_the_image_job_pushes():
    (job,) = jobs(DEPLOY).values()
    (tag_step,) = [step for step in job["steps"] if step.get("id") == "image"]
    assert 'tag=${INPUT_TAG:-sha-${GITHUB_SHA::7}}' in tag_step["run"]
    assert 'image=ghcr.io/${GITHUB_REPOSITORY,,}' in tag_step["run"]
    meta = next(step for step in jobs(CI)["image"]["steps"] if step.get("id") == "meta")
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository }}"
    assert "type=sha,prefix=sha-" in meta["with"]["tags"].split()  # 7 hex digits: metadata-action's default
    assert "suffix=${{ matrix.target == 'gpu' && '-gpu' || '' }}" in meta["with"]["flavor"]


def test_every_variable_and_secret_the_workflows_use_is_documented():
    used = set()
    for path in WORKFLOWS.glob("*.yml"):
        used |= set(re.findall(r"\$\{\{\s*(?:vars|secrets)\.(\w+)", path.read_text()))
    used.discard("GITHUB_TOKEN")
    assert used == {"PUBLIC_URL", "AWS_ROLE_ARN", "AWS_REGION", "EKS_CLUSTER", "TRANSLATION_API_KEY"}
    docs = DOCS.read_text()
    for name in used:
        assert f"`{name}`" in docs, f"docs/ci-cd.md does not explain {name}"
    assert "required reviewers" in docs.lower()


# --- make deploy's image tag ------------------------------------------------------------------------


def deploy_tag(overlay: str) -> str:
    result = make("-n", "deploy", f"OVERLAY={overlay}", "TAG=sha-1234567")
    assert result.returncode == 0, result.stderr
    (tag,) = re.findall(r'newTag: "([^"]+)"', result.stdout)
    return tag


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_make_deploy_tags_each_environment_for_its_hardware(environment):
    expected = "sha-1234567-gpu" if environment in GPU_ENVIRONMENTS else "sha-1234567"
    assert deploy_tag(environment) == expected


def test_the_gpu_image_follows_what_the_overlay_builds_on():
    # By what the pods request, not by name: cpu-full builds on cpu, gpu requests nvidia.com/gpu.
    assert deploy_tag("gpu") == "sha-1234567-gpu"
    assert deploy_tag("cpu") == deploy_tag("cpu-full") == "sha-1234567"


def test_make_deploy_refuses_unknown_overlays():
    for overlay in ("nope", "", "../base", "cpu gpu"):
        result = make("-n", "deploy", f"OVERLAY={overlay}")
        assert result.returncode == 2 and "no overlay k8s/overlays/" in result.stderr, (overlay, result.stderr)
