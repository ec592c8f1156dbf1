"""The Docker image definition and docker-compose.yml (no Docker engine needed).

hadolint lints the Dockerfile with no rule ignored; the rest checks what hadolint cannot: a base pinned
by tag and digest, installs only from hashed locks, only the virtualenv copied into the final stage, a
fixed non-root UID, the exposed ports, a HEALTHCHECK that needs no curl, OCI labels, the console script
as entrypoint, an allowlist .dockerignore, and a compose file whose mounts exist.
"""

from __future__ import annotations

import re
import shlex

import yaml

from tests.bundle.harness import ROOT, run_tool

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_hadolint_passes_with_no_rule_ignored() -> None:
    assert "hadolint ignore" not in DOCKERFILE.read_text()
    assert not (ROOT / ".hadolint.yaml").exists() and not (ROOT / ".hadolint.yml").exists()
    code, output = run_tool("hadolint", "--no-color", str(DOCKERFILE))
    assert code == 0, output


def test_the_base_image_is_pinned_by_version_tag_and_digest() -> None:
    args = dict(arg.split("=", 1) for keyword, arg in instructions() if keyword == "ARG" and "=" in arg)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    stages = [arg for keyword, arg in instructions() if keyword == "FROM"]
    assert len(stages) == 2, "a builder stage and a final stage"
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)


def test_installs_come_only_from_hashed_locks_of_exact_versions() -> None:
    runs = " ".join(arg for keyword, arg in instructions() if keyword == "RUN")
    for command in re.split(r"&&", runs):
        words = shlex.split(command)
        if "pip" in " ".join(words[:1]) and "install" in words:
            assert "--require-hashes" in words or "--no-index" in words, command
    for lock in ("docker/requirements.lock", "docker/requirements-build.lock"):
        entries = re.sub(r"\s*\\\n\s*", " ", (ROOT / lock).read_text())
        requirements = [line for line in entries.splitlines() if line and not line.startswith("#")]
        assert requirements, lock
        for line in requirements:
            assert re.fullmatch(r"[a-z0-9.\-]+==[\w.]+ --hash=sha256:[0-9a-f]{64}", line), line
    locked = {
        line.split("==")[0] for line in (ROOT / "docker/requirements.lock").read_text().splitlines() if "==" in line
    }
    assert {"aiohttp", "prometheus-client", "websockets", "pyyaml", "cryptography"} <= locked


def test_the_final_stage_copies_only_the_virtualenv_and_runs_as_a_fixed_non_root_uid() -> None:
    steps = instructions()
    final = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM") :]
    copies = [arg for keyword, arg in final if keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    users = [arg for keyword, arg in final if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users


def test_ports_healthcheck_labels_and_entrypoint() -> None:
    steps = instructions()
    exposed = {port for keyword, arg in steps if keyword == "EXPOSE" for port in arg.split()}
    assert exposed == {"9945", "9946"}
    healthcheck = next(arg for keyword, arg in steps if keyword == "HEALTHCHECK")
    assert "urllib.request" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    env = " ".join(arg for keyword, arg in steps if keyword == "ENV")
    assert "/-/healthy" in env
    labels = " ".join(arg for keyword, arg in steps if keyword == "LABEL")
    for label in ("title", "description", "version", "revision", "created", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in labels, label
    assert next(arg for keyword, arg in steps if keyword == "ENTRYPOINT") == '["whitebit-exporter"]'
    assert "--demo" in next(arg for keyword, arg in steps if keyword == "CMD")


def test_dockerignore_is_an_allowlist_of_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for keyword, arg in instructions():
        if keyword == "COPY" and not arg.startswith("--from"):
            copied.update(source.rstrip("/") for source in arg.split()[:-1])
    copied = {source.removeprefix("/src/") for source in copied}
    assert copied <= allowed | {"docker/requirements.lock", "docker/requirements-build.lock"}
    for path in allowed:
        assert (ROOT / path).exists(), path


def test_compose_runs_the_demo_prometheus_alertmanager_and_grafana_with_existing_files() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"whitebit-exporter", "prometheus", "alertmanager", "grafana"}
    assert services["whitebit-exporter"]["build"] == "."
    assert "--demo" in services["whitebit-exporter"]["command"]
    for name, service in services.items():
        if "image" in service and "build" not in service:
            assert re.search(r":v?\d+\.\d+\.\d+$", service["image"]), f"{name}: pin the image version"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"
    prometheus_config = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert set(prometheus_config["rule_files"]) <= mounted
    targets = prometheus_config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["whitebit-exporter:9945"]
