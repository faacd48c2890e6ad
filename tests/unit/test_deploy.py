"""compose.yaml, the Kubernetes manifests and the Dockerfile, checked by every means that runs here.

Docker and a cluster do not run on these machines, so: the Compose Specification's JSON schema
(shipped by check-jsonschema), the Kubernetes OpenAPI-derived JSON schemas (kubernetes-validate)
and KEDA's CRD models (cloudcoil-models-keda) on every object ``kubectl kustomize`` renders; every
npcflow command parsed by the real CLI parser; every NPCFLOW_* variable read by the real settings.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import Settings
from topics.catalogue import CATALOGUE, Tier
from workers.worker_config import WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infrastructure" / "k8s"
OVERLAYS = ("base", "overlays/cpu", "overlays/gpu")
KUBERNETES_VERSION = "1.33.0"
#: Images that run the ``npcflow`` entry point (the Dockerfile's ENTRYPOINT).
NPCFLOW_IMAGES = re.compile(
    r"^(\$\{NPCFLOW_IMAGE:-)?(registry\.example\.com/)?npcflow(-gpu)?(:[\w.-]+)?\}?(:[\w.-]+)?$"
)


# ------------------------------------------------------------------ helpers


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def compose_schema() -> dict[str, Any]:
    # The package's own module does not import with our click pin; its data file is all we need.
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[dev]'"
    vendor = Path(next(iter(spec.submodule_search_locations))) / "builtin_schemas" / "vendor"
    return json.loads((vendor / "compose-spec.json").read_text())


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set in the environment: the default."""
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", value)


def npcflow_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the npcflow entry point."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if NPCFLOW_IMAGES.match(svc.get("image", "")) and "entrypoint" not in svc
    }


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed: apt-get install kubectl"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def containers(obj: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def npcflow_containers(overlay: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in rendered(overlay):
        for c in containers(obj):
            if NPCFLOW_IMAGES.match(c["image"]) and "command" not in c:
                yield obj["metadata"]["name"], c


class RecordingEnv(dict[str, str]):
    """An environment that remembers every variable the settings asked for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def settings_from(env: Mapping[str, str]) -> tuple[Settings, set[str]]:
    recording = RecordingEnv(env)
    return Settings.from_env(recording, stack_file=False), recording.asked


def parse_cli(args: list[str]) -> list[str]:
    """Parse ``npcflow ARGS`` down to the leaf command with the real parser; returns the command path."""
    ctx = main.make_context("npcflow", list(args))
    command: click.Command = main
    path = []
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        path.append(name)
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return path


# ------------------------------------------------------------------ compose.yaml


def test_compose_is_valid_against_the_compose_specification() -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_the_schema_check_would_catch_a_mistake() -> None:
    broken = compose()
    broken["services"]["router"]["healtcheck"] = broken["services"]["router"].pop("healthcheck", {})
    broken["services"]["kafka"]["restart"] = ["always"]
    errors = list(jsonschema.Draft202012Validator(compose_schema()).iter_errors(broken))
    assert len(errors) >= 2


def test_compose_runs_the_whole_product() -> None:
    services = compose()["services"]
    required = {
        "kafka", "postgres", "redis", "minio", "opensearch", "prometheus", "grafana", "router",
        "worker-gold", "worker-silver", "worker-bronze", "collector", "topics",
        "sink-postgres", "sink-s3", "sink-opensearch", "sink-redis", "mcp", "sagemaker-local",
        "llm-gold", "llm-silver",
    }  # fmt: skip
    assert required <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["router"]["deploy"]["replicas"] == 2
    assert {"vllm", "trtllm", "sasl-ssl"} <= {p for s in services.values() for p in s.get("profiles", [])}


def test_compose_references_resolve() -> None:
    doc = compose()
    services = doc["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if not svc.get("profiles") and services[dep].get("profiles"):
                assert cond.get("required") is False, f"{name} needs {dep}, which only a profile starts"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("./", "/")):
                assert source in doc["volumes"], f"{name}: undeclared volume {source}"
            else:
                assert (ROOT / source).exists() or source.startswith("./infrastructure/"), source
        for config in svc.get("configs", []):
            assert config["source"] in doc["configs"]
    for config in doc["configs"].values():
        assert (ROOT / config["file"]).exists()


def test_long_running_compose_services_restart_and_report_health() -> None:
    for name, svc in compose()["services"].items():
        assert "restart" in svc, name
        one_shot = svc["restart"] == "no" or svc["restart"].startswith("on-failure")
        if not one_shot:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_every_compose_command_parses_with_the_real_cli() -> None:
    paths = {name: parse_cli(svc["command"]) for name, svc in npcflow_services().items()}
    assert paths["router"] == ["run", "router"]
    assert paths["worker-gold"] == ["run", "worker"]
    assert paths["topics"] == ["topics", "create"]
    assert len(paths) >= 12


def test_compose_settings_are_ones_npcflow_knows_and_accepts() -> None:
    env = {k: interpolate(str(v)) for k, v in compose()["x-npcflow-env"].items()}
    settings, asked = settings_from(env)
    unknown = sorted(k for k in env if k.startswith("NPCFLOW_") and k not in asked)
    assert unknown == []
    assert settings.kafka_bootstrap == "kafka:9092" and settings.kafka.security.protocol == "PLAINTEXT"
    for name, svc in npcflow_services().items():
        assert svc["environment"] == compose()["x-npcflow-env"], name


def test_the_sasl_ssl_profile_gives_valid_security_settings() -> None:
    env = {k: interpolate(str(v)) for k, v in compose()["x-npcflow-env"].items()}
    env |= dict(
        line.split("=", 1)
        for line in (ROOT / "infrastructure/compose/sasl-ssl.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    settings, asked = settings_from(env)
    assert {k for k in env if k.startswith("NPCFLOW_")} <= asked
    security = settings.kafka.security
    assert (security.protocol, security.sasl_mechanism, security.ssl_cafile) == (
        "SASL_SSL",
        "PLAIN",
        "/certs/ca.pem",
    )
    assert (
        "SASL_SSL://kafka-secure:9094"
        in (ROOT / "infrastructure/compose/kafka-secure/server.properties").read_text()
    )
    assert settings.kafka_bootstrap == "kafka-secure:9094"


# ------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_manifests_are_valid_against_the_kubernetes_schemas(overlay: str) -> None:
    from cloudcoil.models.keda import v1alpha1 as keda

    errors = []
    for obj in rendered(overlay):
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("keda.sh/"):
            model = getattr(keda, obj["kind"])
            parsed = model.model_validate(obj)
            # The models ignore unknown fields: a round trip that loses one means a misspelt field.
            again = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
            if again != obj:
                errors.append(f"{label}: fields KEDA does not know: {_diff(obj, again)}")
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{label}: {'/'.join(map(str, exc.path))}: {exc.message}")
    assert errors == []


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() | b.keys() for d in _diff(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, f"{path}/{i}")]
    return [] if a == b else [path]


def test_the_k8s_schema_check_would_catch_a_mistake() -> None:
    deployment = copy.deepcopy(next(o for o in rendered("base") if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_k8s_has_every_process_kind_scaled_and_protected() -> None:
    objs = rendered("base")
    kinds: dict[str, set[str]] = {}
    for obj in objs:
        kinds.setdefault(obj["kind"], set()).add(obj["metadata"]["name"])
    deployments = kinds["Deployment"]
    for process in (
        "router", "worker-gold", "worker-silver", "worker-bronze", "collector",
        "sink-postgres", "sink-s3", "sink-opensearch", "sink-redis", "mcp",
    ):  # fmt: skip
        assert f"npcflow-{process}" in deployments
    assert kinds["PodDisruptionBudget"] >= deployments
    assert {"npcflow-topics-create", "npcflow-db-migrate"} <= kinds["Job"]
    assert {n.rsplit("-", 1)[0] for n in kinds["ConfigMap"]} >= {
        "npcflow-env",
        "npcflow-policy",
        "npcflow-pricing",
    }
    assert kinds["ScaledObject"] == {f"npcflow-worker-{t.value}" for t in Tier}


def test_keda_scales_each_tier_on_its_workers_group_up_to_its_partitions() -> None:
    partitions = {spec.name(""): spec.partitions for spec in CATALOGUE}
    settings = Settings.from_env({"NPCFLOW_KAFKA_BOOTSTRAP": "k:9"}, stack_file=False)
    scaled = {o["metadata"]["name"]: o for o in rendered("base") if o["kind"] == "ScaledObject"}
    for tier in Tier:
        obj = scaled[f"npcflow-worker-{tier.value}"]
        trigger = obj["spec"]["triggers"][0]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == WorkerConfig.from_settings(settings, tier).group
        topic = trigger["metadata"]["topic"]
        assert topic == f"npc.requests.{tier.value}"
        # A worker beyond the partition count gets no partition: it would only cost money.
        assert obj["spec"]["maxReplicaCount"] <= partitions[topic]
        assert obj["spec"]["scaleTargetRef"]["name"] == obj["metadata"]["name"]


def test_gold_and_silver_get_a_gpu_on_gpu_nodes_in_the_gpu_overlay() -> None:
    by_name = {o["metadata"]["name"]: o for o in rendered("overlays/gpu") if o["kind"] == "Deployment"}
    for tier in ("gold", "silver"):
        pod = by_name[f"npcflow-worker-{tier}"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert container["image"].endswith("npcflow-gpu:0.1.0")
        assert any(
            e["name"] == "NPCFLOW_KAFKA_SASL_PASSWORD" for e in container["env"]
        )  # merged, not replaced
    bronze = by_name["npcflow-worker-bronze"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in bronze["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_k8s_command_parses_and_every_setting_is_known(overlay: str) -> None:
    objs = rendered(overlay)
    env_maps = [
        o["data"]
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("npcflow-env")
    ]
    assert len(env_maps) == 1
    env = dict(env_maps[0])
    seen = 0
    for name, container in npcflow_containers(overlay):
        assert container["envFrom"] == [{"configMapRef": {"name": _env_map_name(objs)}}], name
        parse_cli(container["args"])
        own = {e["name"]: e.get("value", "placeholder-secret") for e in container.get("env", [])}
        settings, asked = settings_from(env | own)
        unknown = sorted(k for k in env | own if k.startswith("NPCFLOW_") and k not in asked)
        assert unknown == [], name
        assert settings.kafka.security.protocol == "SASL_SSL"
        seen += 1
    assert seen >= 12


def _env_map_name(objs: tuple[dict[str, Any], ...]) -> str:
    return next(
        o["metadata"]["name"]
        for o in objs
        if o["kind"] == "ConfigMap" and "npcflow-env" in o["metadata"]["name"]
    )


def test_the_config_maps_carry_the_packaged_policy_and_pricing() -> None:
    assert (K8S / "base/policy.yaml").read_text() == (ROOT / "topics/policy.yaml").read_text()
    assert (K8S / "base/pricing.yaml").read_text() == (
        ROOT / "pipeline/observability/pricing.yaml"
    ).read_text()


def test_the_k8s_readme_says_how_to_create_every_secret_referenced() -> None:
    readme = (K8S / "README.md").read_text()
    referenced = set()
    for obj in rendered("base"):
        for c in containers(obj):
            for e in c.get("env", []):
                if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                    referenced.add(ref["name"])
        for v in obj.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if "secret" in v:
                referenced.add(v["secret"]["secretName"])
        for ref in obj.get("spec", {}).get("secretTargetRef", []):
            referenced.add(ref["name"])
    assert referenced == {"npcflow-kafka", "npcflow-kafka-tls", "npcflow-database", "npcflow-aws"}
    for name in referenced:
        assert f"create secret generic {name}" in readme, name


# ------------------------------------------------------------------ the image


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_image_is_multi_stage_slim_non_root_with_the_npcflow_entry_point() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert "-slim" in stage[0]
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert final[-2:] == ['ENTRYPOINT ["npcflow"]', 'CMD ["--help"]']
    assert not any(line.upper().startswith(("RUN PIP", "COPY . ")) for line in final)


def test_the_production_image_never_carries_the_embedded_extra() -> None:
    build = " ".join(dockerfile_stages()[0])
    assert 'ARG EXTRAS=""' in build and "ARG DEV_IMAGE=0" in build
    assert "EXTRAS=embedded is for DEV_IMAGE=1 only" in build
    assert 'if [ "${DEV_IMAGE}" != "1" ]; then rm -rf devstack' in build
    # Every product package is copied in; the console script is the ENTRYPOINT's name.
    for package in ("pipeline", "topics", "workers"):
        assert f"COPY {package} ./{package}" in build
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'npcflow = "pipeline.cli:main"' in pyproject
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".npcflow", "tests"} <= set(ignored)
