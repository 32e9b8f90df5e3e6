"""The GitHub workflows and the Make targets they call, offline: the workflows validate against the
workflow schema, every `run:` script parses, the lint job runs `make lint`, the image job builds, runs
(`make smoke-image`) and only then pushes, the deploy jobs go to the environments dev, staging and prod in
that order of trust, and `make deploy` picks the image each environment's overlay needs.

scripts/smoke_image.sh is run for real against a fake `docker` (a stub on PATH that logs its calls and plays
a container's part) and a real HTTP server on 127.0.0.1 standing in for the service in the container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    # --no-print-directory: under `make test` (MAKELEVEL > 0) make would add "Entering directory" lines to stdout.
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)


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
    assert called == {"test", "lint", "smoke-image", "deploy", "health-check", "rollback"}
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


# --- the image job: build and load, smoke test, then push ---------------------------------------------


def image_steps() -> list[dict]:
    return jobs(CI)["image"]["steps"]


def step_index(steps: list[dict], predicate, what: str) -> int:
    found = [i for i, step in enumerate(steps) if predicate(step)]
    assert len(found) == 1, f"expected one {what} step in the image job, found {len(found)}"
    return found[0]


def pushes(step: dict) -> bool:
    """Whether a step can put an image in a registry."""
    if step.get("uses", "").startswith("docker/build-push-action@"):
        return step.get("with", {}).get("push") not in (None, False, "false")
    return bool(re.search(r"\bdocker\s+(image\s+)?push\b|\bmake\s+push", step.get("run", "")))


def test_the_image_job_builds_and_loads_then_smoke_tests_then_pushes():
    steps = image_steps()
    build = step_index(steps, lambda s: s.get("uses", "").startswith("docker/build-push-action@"), "build")
    smoke = step_index(steps, lambda s: s.get("run", "").startswith("make smoke-image "), "smoke test")
    login = step_index(steps, lambda s: s.get("uses", "").startswith("docker/login-action@"), "registry login")
    push = step_index(steps, pushes, "push")
    assert build < smoke < login < push, "build/load -> smoke test -> (login) -> push"

    # The build loads the image into the runner's Docker and pushes nothing, with the same cache as before.
    built = steps[build]["with"]
    assert built["load"] is True and built["push"] is False
    assert built["target"] == "${{ matrix.target }}" and built["tags"] == "${{ steps.meta.outputs.tags }}"
    assert built["cache-from"] == "type=gha,scope=${{ matrix.target }}"
    assert built["cache-to"] == "type=gha,mode=max,scope=${{ matrix.target }}"
    assert steps[build]["id"] == "build"

    # Nothing before the smoke test can push, and the push runs only when every earlier step passed: no
    # `if:` (always(), failure()...) and no continue-on-error on the smoke test or anything after it.
    assert not [step for step in steps[:smoke] if pushes(step)]
    for step in steps[smoke:]:
        assert "if" not in step and not step.get("continue-on-error"), step
    assert not jobs(CI)["image"].get("continue-on-error")

    # The push sends the very tags that were built, after checking each is the image the smoke test ran.
    pushed = steps[push]
    assert pushed["env"]["TAGS"] == "${{ steps.meta.outputs.tags }}"
    assert pushed["env"]["SUFFIX"] == steps[smoke]["env"]["SUFFIX"]
    script = pushed["run"]
    smoked = re.search(r'IMAGE="([^"]+)" TAG="([^"]+)"', steps[smoke]["run"]).groups()
    assert f'tested=$(docker image inspect --format \'{{{{.Id}}}}\' "{smoked[0]}:{smoked[1]}")' in script
    assert script.index('[ "$id" = "$tested" ]') < script.index('docker push "$tag"')


def test_the_smoke_test_runs_the_image_the_deployments_will_pull():
    """The smoke test's IMAGE:TAG is the sha- tag that metadata-action gives the build and that deploy.yml
    deploys (-gpu for the GPU image)."""
    step = next(s for s in image_steps() if s.get("run", "").startswith("make smoke-image "))
    assert step["run"] == 'make smoke-image IMAGE="ghcr.io/${GITHUB_REPOSITORY,,}" TAG="sha-${GITHUB_SHA::7}${SUFFIX}"'
    meta = next(s for s in image_steps() if s.get("id") == "meta")
    suffix = step["env"]["SUFFIX"]
    assert f"suffix={suffix},onlatest=true" in meta["with"]["flavor"]
    (job,) = jobs(DEPLOY).values()
    (tag_step,) = [s for s in job["steps"] if s.get("id") == "image"]
    assert "image=ghcr.io/${GITHUB_REPOSITORY,,}" in tag_step["run"] and "sha-${GITHUB_SHA::7}" in tag_step["run"]
    assert step.get("timeout-minutes", 0) >= 10, "bounded, with room for two model loads (the GPU image)"


def test_make_smoke_image_runs_the_script_with_the_image_and_tag():
    printed = make("-n", "smoke-image", "IMAGE=ghcr.io/o/r", "TAG=sha-1234567-gpu", "SMOKE_PORT=9600", "SMOKE_WAIT=120")
    assert printed.returncode == 0, printed.stderr
    assert "./scripts/smoke_image.sh --port 9600 --wait 120" in printed.stdout
    assert printed.stdout.rstrip().endswith(" ghcr.io/o/r:sha-1234567-gpu")


# --- scripts/smoke_image.sh against a fake docker -------------------------------------------------------

SMOKE = ROOT / "scripts" / "smoke_image.sh"
NO_GPU_LOG = "service: error: device cuda was requested but CTranslate2 sees no CUDA device"
# A fake `docker`: logs every call, keeps its containers in a JSON file, plays each `run` by the next entry of
# the scenario's "runs": "serve" (running until stopped; stop_exit is its exit status then) or "exit" (has exited
# with that status). The service in the container is the test's HTTP server.
FAKE_DOCKER = r"""#!PYTHON
import json, os, sys

state = os.environ["FAKE_DOCKER_STATE"]
args = sys.argv[1:]
with open(os.path.join(state, "calls.jsonl"), "a") as log:
    log.write(json.dumps(args) + "\n")
scenario = json.load(open(os.path.join(state, "scenario.json")))
path = os.path.join(state, "containers.json")
containers = json.load(open(path)) if os.path.exists(path) else {}

def save():
    json.dump(containers, open(path, "w"))

def find(ref):
    for cid, container in containers.items():
        if ref in (cid, container["name"]):
            return container
    sys.exit(f"Error: No such container: {ref}")

def option(name):
    return args[args.index(name) + 1]

command = args[0]
if command == "image" and args[1] == "inspect":
    if scenario.get("no_image"):
        sys.exit(f"Error: No such image: {args[-1]}")
    if ".Config.Env" in option("--format"):
        print("\n".join(["PATH=/usr/bin", *scenario.get("env", [])]))
    else:
        print("sha256:" + "5e" * 32)
elif command == "run":
    number = len(containers)
    runs = scenario["runs"]
    cid = f"{number:02d}" * 32
    containers[cid] = {"name": option("--name"), "args": args, "play": runs[min(number, len(runs) - 1)], "stopped": False}
    save()
    print(cid)
elif command == "inspect":
    play = find(args[-1])["play"]
    if ".State.Health" in option("--format"):
        print(play.get("health", "healthy"))
    elif "exit" in play:
        print(f"exited {play['exit']}")
    elif find(args[-1])["stopped"]:
        print(f"exited {play.get('stop_exit', 0)}")
    else:
        print("running 0")
elif command == "logs":
    print(find(args[-1])["play"].get("log", "a line of the container's log"))
elif command == "stop":
    find(args[-1])["stopped"] = True
    save()
    print(args[-1])
elif command == "rm":
    find(args[-1])["removed"] = True
    save()
else:
    sys.exit(f"fake docker: unexpected call {args}")
"""


class FakeService:
    """The service in the container: /readyz (503 for the first `not_ready` calls), /translation, /languages."""

    def __init__(self, not_ready: int = 0, translation_status: int = 200) -> None:
        self.requests: list[str] = []
        self.not_ready = not_ready
        self.translation_status = translation_status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                outer.requests.append(f"GET {self.path}")
                if self.path == "/readyz":
                    ready = sum(r == "GET /readyz" for r in outer.requests) > outer.not_ready
                    self.answer(200 if ready else 503, {"status": "ready" if ready else "loading"})
                elif self.path == "/languages":
                    self.answer(200, {"languages": ["en", "fr"]})
                else:
                    self.answer(404, {"error": {"code": "not_found", "message": self.path}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append(f"POST {self.path}")
                if outer.translation_status != 200:
                    self.answer(outer.translation_status, {"error": {"code": "translation_failed", "message": "engine failed"}})
                    return
                records = body["payload"]["records"]
                self.answer(200, {"result": [{"id": r["id"], "text": "Bonjour le monde."} for r in records]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeService:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeDocker:
    def __init__(self, tmp_path: Path, **scenario) -> None:
        self.state = tmp_path / "docker-state"
        self.state.mkdir()
        (self.state / "scenario.json").write_text(json.dumps({"runs": [{}], **scenario}))
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        self.path = bin_dir / "docker"
        self.path.write_text(FAKE_DOCKER.replace("PYTHON", sys.executable, 1))
        self.path.chmod(0o755)
        self.env = {
            **os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_DOCKER_STATE": str(self.state),
            "PYTHON": sys.executable, "SMOKE_POLL_SECONDS": "0.1",
        }

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in (self.state / "calls.jsonl").read_text().splitlines()]

    def runs(self) -> list[list[str]]:
        return [call for call in self.calls() if call[0] == "run"]

    def containers(self) -> dict:
        return json.loads((self.state / "containers.json").read_text())

    def smoke(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SMOKE), *args, "ghcr.io/o/r:sha-1234567"], cwd=ROOT, capture_output=True, text=True,
            env={**self.env, **(env or {})}, check=False, timeout=60,
        )


def started_as_a_pod(run: list[str], port: int) -> bool:
    options = " ".join(run)
    return all(flag in options for flag in (
        f"--publish 127.0.0.1:{port}:9527", "--read-only", "--tmpfs /tmp", "--cap-drop ALL", "--security-opt no-new-privileges",
    )) and run[-1] == "ghcr.io/o/r:sha-1234567"


def test_smoke_cpu_image_waits_for_readyz_translates_and_stops_cleanly(tmp_path):
    docker = FakeDocker(tmp_path)
    with FakeService(not_ready=3) as service:
        result = docker.smoke("--port", str(service.port), "--wait", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: PASS ghcr.io/o/r:sha-1234567" in result.stdout
    (run,) = docker.runs()
    assert started_as_a_pod(run, service.port) and "--gpus" not in run and "MT_DEVICE=cpu" not in run
    # Ready first (after the 503s), then the health check's real translation and /languages.
    assert service.requests.count("GET /readyz") == 4
    first_translation = service.requests.index("POST /translation")
    assert service.requests[first_translation - 1] == "GET /readyz" and "GET /languages" in service.requests[first_translation:]
    # Then the image's HEALTHCHECK, a clean stop, and the container removed.
    verbs = [call[0] for call in docker.calls()]
    assert verbs.index("stop") > verbs.index("run") and verbs[-1] == "rm"
    assert all(container.get("removed") for container in docker.containers().values())
    assert "docker logs" not in result.stderr, "logs are printed on failures only"


def test_smoke_fails_when_the_service_never_gets_ready_and_shows_its_log(tmp_path):
    docker = FakeDocker(tmp_path, runs=[{"log": "loading the model ..."}])
    with FakeService(not_ready=10**6) as service:
        started = time.monotonic()
        result = docker.smoke("--port", str(service.port), "--wait", "2")
    assert result.returncode == 1
    assert time.monotonic() - started < 20, "the wait is bounded by --wait"
    assert "/readyz not 200 after 2s (last: 503)" in result.stderr
    assert "---- docker logs" in result.stderr and "loading the model ..." in result.stderr
    assert "POST /translation" not in service.requests
    assert all(container.get("removed") for container in docker.containers().values())


def test_smoke_stops_waiting_as_soon_as_the_container_exits(tmp_path):
    docker = FakeDocker(tmp_path, runs=[{"exit": 1, "log": "Traceback: ModuleNotFoundError"}])
    with FakeService() as service:
        started = time.monotonic()
        result = docker.smoke("--port", str(service.port), "--wait", "300")
    assert result.returncode == 1 and time.monotonic() - started < 20
    assert "stopped before it was ready (status, exit code: exited 1)" in result.stderr
    assert "ModuleNotFoundError" in result.stderr
    assert all(container.get("removed") for container in docker.containers().values())


def test_smoke_fails_when_the_translation_fails(tmp_path):
    docker = FakeDocker(tmp_path)
    with FakeService(translation_status=500) as service:
        result = docker.smoke("--port", str(service.port), "--wait", "10")
    assert result.returncode == 1
    assert "FAIL POST" in result.stderr and "translation_failed" in result.stderr  # health_check.py's line
    assert "scripts/health_check.py" in result.stderr and "---- docker logs" in result.stderr
    assert "stop" not in [call[0] for call in docker.calls()]
    assert all(container.get("removed") for container in docker.containers().values())


@pytest.mark.parametrize(("play", "message"), [
    ({"stop_exit": 137}, "after SIGTERM the container should exit 0, got (status, exit code): exited 137"),
    ({"health": "unhealthy"}, "the image's HEALTHCHECK reports unhealthy"),
])
def test_smoke_fails_on_a_bad_healthcheck_or_an_unclean_stop(tmp_path, play, message):
    docker = FakeDocker(tmp_path, runs=[play])
    with FakeService() as service:
        result = docker.smoke("--port", str(service.port), "--wait", "10")
    assert result.returncode == 1 and message in result.stderr, result.stdout + result.stderr


def test_smoke_gpu_image_must_refuse_without_a_gpu_then_serve_on_the_cpu(tmp_path):
    docker = FakeDocker(tmp_path, env=["MT_DEVICE=cuda", "MT_COMPUTE_TYPE=float16"],
                        runs=[{"exit": 2, "log": NO_GPU_LOG}, {}])
    with FakeService() as service:
        result = docker.smoke("--port", str(service.port), "--wait", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    as_built, on_cpu = docker.runs()
    assert started_as_a_pod(as_built, service.port) and "--env" not in as_built
    assert started_as_a_pod(on_cpu, service.port)
    assert " ".join(on_cpu).count("--env MT_DEVICE=cpu --env MT_COMPUTE_TYPE=int8") == 1
    assert "refused to start without a GPU, as designed" in result.stdout
    assert "POST /translation" in service.requests
    assert len(docker.containers()) == 2 and all(c.get("removed") for c in docker.containers().values())


def test_the_refusal_the_smoke_test_expects_is_what_the_service_says(tmp_path):
    """The GPU image as built (MT_DEVICE=cuda) on a machine without CUDA: service/__main__.py exits 2 with
    the engine's message, which the script looks for (skipped where this machine has a GPU)."""
    import ctranslate2

    from service.engine import EngineError, resolve_device

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(EngineError) as error:
        resolve_device("cuda")
    script = SMOKE.read_text()
    (expected,) = re.findall(r'^NO_GPU_MESSAGE="([^"]+)"', script, re.MULTILINE)
    assert expected in str(error.value) and expected in NO_GPU_LOG
    main = (ROOT / "service" / "__main__.py").read_text()
    assert re.search(r"except \([^)]*EngineError[^)]*\) as error:\s+print\(f\"service: error: \{error\}\", file=sys.stderr\)\s+return 2", main)


@pytest.mark.parametrize(("play", "message"), [
    ({}, "a GPU image without a GPU should refuse to start; still running after 1s"),
    ({"exit": 1, "log": "Segmentation fault"}, "expected exit status 2 without a GPU, got (status, exit code): exited 1"),
    ({"exit": 2, "log": "service: error: MT_BEAM_SIZE must be at least 1"}, 'its log does not say "no CUDA device"'),
])
def test_smoke_gpu_image_fails_unless_it_refuses_as_designed(tmp_path, play, message):
    docker = FakeDocker(tmp_path, env=["MT_DEVICE=cuda"], runs=[play, {}])
    with FakeService() as service:
        result = docker.smoke("--port", str(service.port), "--wait", "10", env={"SMOKE_EXIT_WAIT": "1"})
    assert result.returncode == 1 and message in result.stderr, result.stdout + result.stderr
    assert len(docker.runs()) == 1, "the CPU run comes only after the refusal"
    assert all(container.get("removed") for container in docker.containers().values())


def test_smoke_gpu_image_with_gpus_serves_as_built(tmp_path):
    docker = FakeDocker(tmp_path, env=["MT_DEVICE=cuda"])
    with FakeService() as service:
        result = docker.smoke("--gpus", "all", "--port", str(service.port), "--wait", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = docker.runs()
    assert " ".join(run).count("--gpus all") == 1 and "MT_DEVICE=cpu" not in " ".join(run)


def test_smoke_refuses_a_missing_image_and_bad_usage(tmp_path):
    docker = FakeDocker(tmp_path, no_image=True)
    result = docker.smoke("--port", "9")
    assert result.returncode == 2 and "no image ghcr.io/o/r:sha-1234567 in the local Docker" in result.stderr
    assert not docker.runs()
    for args in (["--port", "x"], ["--wait"], ["--bogus"]):
        assert docker.smoke(*args).returncode == 2, args


def test_make_smoke_image_against_the_fake_docker(tmp_path):
    docker = FakeDocker(tmp_path)
    with FakeService() as service:
        result = subprocess.run(
            ["make", "-s", "smoke-image", "IMAGE=ghcr.io/o/r", "TAG=sha-1234567", f"DOCKER={docker.path}",
             f"SYSTEM_PYTHON={sys.executable}", f"SMOKE_PORT={service.port}", "SMOKE_WAIT=10"],
            cwd=ROOT, capture_output=True, text=True, env=docker.env, check=False, timeout=60,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = docker.runs()
    assert started_as_a_pod(run, service.port)
