"""The Helm chart's values and the plain example manifests.

These checks need no helm (the real helm and API server run in tests/k8s_real, `make test-k8s`):
every values file against values.schema.json (what `helm install` itself enforces), every
`.Values` path a template reads against the schema (a misspelt one renders as empty, silently),
and the manifests in deploy/examples/ (each mode's `helm template` output written by
scripts/gen-examples, plus the hand-written sidecar pod) against the Kubernetes OpenAPI schemas
of the newest release that kubernetes-validate ships, strictly (unknown fields are errors), and
then for what each mode needs from the kernel and the API server: their RBAC is exactly the API
calls of the mode (pressured/k8s/access.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pressured.k8s import access
from pressured.kernel import procfs

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pressured"
SCHEMA_PATH = CHART / "values.schema.json"
VALUES_PATH = CHART / "values.yaml"
EXAMPLE_VALUES = sorted((CHART / "examples").glob("*.yaml"))
TEMPLATES = sorted((CHART / "templates").glob("*"))
MANIFESTS = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))

# The five host paths node mode mounts, and what each is for (docs/kubernetes.md).
NODE_HOST_PATHS = {
    "/sys/fs/cgroup": "Directory",  # every container's memory files and PSI
    "/dev/kmsg": "CharDevice",  # the OOM killer's report
    "/sys/kernel/tracing": "Directory",  # oom:mark_victim tracepoint id
    "/lib/modules": "Directory",  # kernel headers for bcc
    "/usr/src": "Directory",
}
# Every one read-only but the cgroup tree: arming a PSI trigger opens memory.pressure O_RDWR and
# a v1 threshold writes cgroup.event_control, and both fail with EROFS on a read-only bind mount
# (test_read_only_cgroup_mount_refuses_a_psi_trigger shows it on this host's cgroup2 tree).
NODE_WRITABLE_HOST_PATHS = {"/sys/fs/cgroup"}
# And the daemon's own state (values stateDir.hostPath): the kill journal and counters outlive
# the pod, mounted beside the emptyDir at /var/lib/pressured (spool, local storage), not over it.
NODE_STATE = {"path": "/var/lib/pressured", "type": "DirectoryOrCreate"}
NODE_STATE_MOUNT = "/var/lib/pressured/state"
DOWNWARD_ENV = {
    "NODE_NAME": "spec.nodeName",
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "POD_UID": "metadata.uid",
}

Doc = dict[str, Any]


# ---------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_docs(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def validator() -> jsonschema.protocols.Validator:
    schema_doc = schema()
    cls = jsonschema.validators.validator_for(schema_doc)
    cls.check_schema(schema_doc)
    return cls(schema_doc)


def helm_values(*overrides: Mapping[str, Any]) -> dict[str, Any]:
    """values.yaml with user values laid over it the way Helm coalesces them: maps merge key by
    key, anything else replaces, and null deletes the key."""

    def coalesce(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            if value is None:
                out.pop(key, None)
            elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = coalesce(out[key], value)
            else:
                out[key] = value
        return out

    merged: dict[str, Any] = load_yaml(VALUES_PATH)
    for over in overrides:
        merged = coalesce(merged, over)
    return merged


def schema_errors(values: Mapping[str, Any]) -> list[str]:
    """Each error as "<dotted path>: <message>", the path empty at the top level."""
    return [
        ".".join(str(part) for part in error.absolute_path) + ": " + error.message
        for error in validator().iter_errors(values)
    ]


def newest_kubernetes() -> str:
    """The newest Kubernetes release whose schemas the installed kubernetes-validate carries."""
    version: str = kubernetes_validate.latest_version()
    return version


def major_minor(version: str) -> tuple[int, int]:
    major, minor = version.removeprefix("v").split(".")[:2]
    return int(major), int(minor)


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


WORKLOAD_KINDS = {"Pod", "Deployment", "DaemonSet"}


def workload_of(docs: list[Doc]) -> Doc:
    found = [doc for doc in docs if doc["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, [doc["kind"] for doc in found]
    return found[0]


def pod_template(workload: Doc) -> Doc:
    """The pod itself, or the pod template of a controller: both have metadata and spec."""
    template: Doc = workload if workload["kind"] == "Pod" else workload["spec"]["template"]
    return template


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = pod_template(workload)["spec"]
    return spec


def container(spec: Doc, name: str = "pressured") -> Doc:
    for item in spec["containers"]:
        if item["name"] == name:
            found: Doc = item
            return found
    raise AssertionError(f"no container {name!r} in {[c['name'] for c in spec['containers']]}")


def env_of(item: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in item.get("env", [])}


def rbac_grants(role: Doc) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination a Role or ClusterRole grants."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def manifest_docs() -> Iterator[tuple[str, Doc]]:
    for path in MANIFESTS:
        for index, doc in enumerate(load_docs(path)):
            yield f"{path.name}#{index}:{doc.get('kind')}", doc


def manifest(name: str) -> list[Doc]:
    return load_docs(ROOT / "deploy" / "examples" / name)


# ---------------------------------------------------------------- values and schema


def test_schema_is_a_valid_draft7_schema() -> None:
    schema_doc = schema()
    assert schema_doc["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema_doc)


def test_values_yaml_matches_schema() -> None:
    assert schema_errors(load_yaml(VALUES_PATH)) == []


def test_values_yaml_and_schema_declare_the_same_keys() -> None:
    # A key in the schema but not in values.yaml is undocumented; the other way round the
    # schema would reject the chart's own defaults.
    assert set(load_yaml(VALUES_PATH)) == set(schema()["properties"])


def test_examples_cover_both_modes() -> None:
    modes = {load_yaml(path).get("mode") for path in EXAMPLE_VALUES}
    assert modes == {"node", "cluster"}


@pytest.mark.parametrize("path", EXAMPLE_VALUES, ids=lambda p: p.name)
def test_example_values_match_schema(path: Path) -> None:
    user_values = load_yaml(path)
    assert isinstance(user_values, dict)
    # Alone (the schema must accept what a user writes) and merged over the defaults (what
    # Helm validates).
    assert schema_errors(user_values) == []
    assert schema_errors(helm_values(user_values)) == []


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"mode": "sidecar"}, "mode: 'sidecar' is not one of"),
        ({"mode": "Node"}, "mode: 'Node' is not one of"),
        ({"replicaCount": 2}, ": Additional properties are not allowed ('replicaCount'"),
        ({"image": {"registry": "ghcr.io"}}, "image: Additional properties are not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy: 'Sometimes' is not one of"),
        ({"metrics": {"port": "9000"}}, "metrics.port: '9000' is not of type 'integer'"),
        ({"metrics": {"port": 70000}}, "metrics.port: 70000 is greater than the maximum"),
        ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "metrics.serviceMonitor.interval"),
        ({"config": {"threshold": {"warn_percent": 70}}}, "config: Additional properties"),
        ({"config": {"actions": [{"on": "warning"}]}}, "config.actions.0: 'type' is a required"),
        ({"s3": {"enabled": True}}, "s3.bucket: ''"),
        ({"s3": {"enabled": True, "endpointUrl": "minio:9000"}}, "s3.endpointUrl"),
        ({"luaScripts": {"notify": "return 1"}}, "luaScripts: 'notify' does not match"),
        ({"podDisruptionBudget": {"maxUnavailable": 1, "minAvailable": 1}}, "podDisruptionBudget"),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "podDisruptionBudget.maxUnavailable"),
        (
            {"tolerations": {"operator": "Exists"}},
            "tolerations: {'operator': 'Exists'} is not of type",
        ),
        (
            {"extraVolumeMounts": [{"name": "x", "mountPath": "rel"}]},
            "extraVolumeMounts.0.mountPath",
        ),
        (
            {"config": {"actions": [{"type": "k8s-event"}]}, "actions": {"events": False}},
            "actions.events: True was expected",
        ),
        ({"config": {"actions": [{"type": "evict"}]}}, "actions.eviction: True was expected"),
    ],
)
def test_schema_rejects(override: dict[str, Any], where: str) -> None:
    errors = schema_errors(helm_values(override))
    assert any(where in error for error in errors), errors


@pytest.mark.parametrize(
    "override",
    [
        {
            "mode": "cluster",
            "config": {"actions": [{"type": "evict"}]},
            "actions": {"eviction": True},
        },
        # Without chart-made RBAC the operator grants the permission; the chart cannot check it.
        {"config": {"actions": [{"type": "k8s-event"}]}, "rbac": {"create": False}},
        {"podDisruptionBudget": {"enabled": True, "maxUnavailable": None, "minAvailable": "50%"}},
        {"tolerations": [], "priorityClassName": "", "securityContext": {}},
        {"s3": {"enabled": True, "bucket": "b", "endpointUrl": "http://minio.minio:9000"}},
    ],
)
def test_schema_accepts(override: dict[str, Any]) -> None:
    assert schema_errors(helm_values(override)) == []


@pytest.mark.parametrize(
    "user_file",
    [
        {"s3": {"region": "eu-west-1"}},
        {"image": {"tag": "0.2.0"}},
        {"metrics": {"serviceMonitor": {"enabled": True}}},
    ],
)
def test_schema_accepts_a_partial_user_file_alone(user_file: dict[str, Any]) -> None:
    # A user file sets a few keys; the defaults fill in the rest before Helm validates, so
    # nothing may be required of the file alone.
    assert schema_errors(user_file) == []


VALUES_REFERENCE = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def template_value_paths() -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for path in TEMPLATES:
        for match in VALUES_REFERENCE.finditer(path.read_text(encoding="utf-8")):
            paths.add(tuple(match.group(1).lstrip(".").split(".")))
    return paths


def test_templates_read_only_values_the_schema_declares() -> None:
    paths = template_value_paths()
    assert ("mode",) in paths  # the pattern finds what the templates read
    top = schema()
    undeclared = []
    for parts in sorted(paths):
        node: Mapping[str, Any] = top
        for part in parts:
            properties: Mapping[str, Any] = node.get("properties", {})
            if part in properties:
                node = properties[part]
                ref = node.get("$ref", "")
                if ref.startswith("#/definitions/"):
                    node = top["definitions"][ref.removeprefix("#/definitions/")]
            elif node.get("type") == "object" and "properties" not in node:
                break  # a free-form map such as config or resources: any key may follow
            else:
                undeclared.append(".".join(parts))
                break
    assert undeclared == []


# ---------------------------------------------------------------- example manifests


def test_kubernetes_validate_carries_a_current_release() -> None:
    assert major_minor(newest_kubernetes()) >= (1, 32), newest_kubernetes()


def test_strict_validation_rejects_unknown_fields() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolice": "Always"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, newest_kubernetes(), strict=True)


MANIFEST_DOCS = list(manifest_docs())


@pytest.mark.parametrize(
    ("doc_id", "doc"), MANIFEST_DOCS, ids=[doc_id for doc_id, _ in MANIFEST_DOCS]
)
def test_manifest_is_valid_for_newest_kubernetes(doc_id: str, doc: Doc) -> None:
    version = newest_kubernetes()
    validated = kubernetes_validate.validate(doc, version, strict=True)
    # The schemas used are the newest release's, not an older fallback.
    assert major_minor(validated) == major_minor(version), doc_id


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_wiring(path: Path) -> None:
    """References inside one file resolve: configMaps, service accounts, role bindings, probe
    ports, the Service selector; and the config's mode is the env's mode."""
    docs = load_docs(path)
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    workload = workload_of(docs)
    spec = pod_spec(workload)
    watcher = container(spec)

    assert ("ServiceAccount", spec["serviceAccountName"]) in names
    namespace = workload["metadata"]["namespace"]
    assert ("Namespace", namespace) in names
    for doc in docs:
        if doc["kind"] != "Namespace" and not doc["kind"].startswith("Cluster"):
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]

    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in names
        for subject in binding["subjects"]:
            assert subject == {
                "kind": "ServiceAccount",
                "name": spec["serviceAccountName"],
                "namespace": namespace,
            }

    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for mount in watcher["volumeMounts"]:
        assert mount["name"] in volumes
    config_volume = volumes[
        next(m["name"] for m in watcher["volumeMounts"] if m["mountPath"] == "/etc/pressured")
    ]
    config_map = next(
        doc
        for doc in by_kind(docs, "ConfigMap")
        if doc["metadata"]["name"] == config_volume["configMap"]["name"]
    )
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    env = env_of(watcher)
    assert config["source"]["mode"] == env["PRESSURED_MODE"]["value"]
    assert watcher["args"] == ["run", "-c", env["PRESSURED_CONFIG"]["value"]]
    assert env["PRESSURED_CONFIG"]["value"] == "/etc/pressured/config.yaml"

    port_names = {port["name"]: port["containerPort"] for port in watcher["ports"]}
    assert port_names["metrics"] == config["metrics"]["port"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in watcher:
            assert watcher[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}

    pod_labels = pod_template(workload)["metadata"]["labels"]
    if workload["kind"] != "Pod":
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for service in by_kind(docs, "Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_watcher_gets_identity_from_the_downward_api(path: Path) -> None:
    watcher = container(pod_spec(workload_of(load_docs(path))))
    env = env_of(watcher)
    for name, field_path in DOWNWARD_ENV.items():
        assert env[name]["valueFrom"] == {"fieldRef": {"fieldPath": field_path}}, name
    # The root filesystem stays read-only: every place the daemon writes is a volume.
    assert watcher["securityContext"]["readOnlyRootFilesystem"] is True
    mounted = {mount["mountPath"] for mount in watcher["volumeMounts"]}
    assert {"/tmp", "/var/lib/pressured", "/etc/pressured"} <= mounted


def test_node_daemonset_has_host_pid_mounts_and_tolerations() -> None:
    docs = manifest("daemonset.yaml")
    spec = pod_spec(one(docs, "DaemonSet"))
    watcher = container(spec)

    assert spec["hostPID"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert watcher["securityContext"]["privileged"] is True
    assert watcher["image"].split(":")[0].endswith("pressured-privileged")

    host_volumes = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert host_volumes.pop("node-state") == NODE_STATE
    (state,) = [m for m in watcher["volumeMounts"] if m["name"] == "node-state"]
    assert state["mountPath"] == NODE_STATE_MOUNT == config_of(docs)["state_dir"]
    assert not state.get("readOnly", False)
    assert {hp["path"]: hp["type"] for hp in host_volumes.values()} == NODE_HOST_PATHS
    host_mounts = {m["mountPath"]: m for m in watcher["volumeMounts"] if m["name"] in host_volumes}
    assert set(host_mounts) == set(NODE_HOST_PATHS)
    for mount_path, mount in host_mounts.items():
        # Mounted where the daemon's defaults look (kills.kmsg.path, kills.tracepoint.tracefs,
        # source.cgroup.path).
        assert host_volumes[mount["name"]]["path"] == mount_path
        read_only = mount.get("readOnly", False)
        assert read_only is (mount_path not in NODE_WRITABLE_HOST_PATHS), mount_path

    assert env_of(watcher)["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def config_of(docs: list[Doc]) -> Doc:
    for cm in by_kind(docs, "ConfigMap"):
        if "config.yaml" in cm.get("data", {}):
            config: Doc = yaml.safe_load(cm["data"]["config.yaml"])
            return config
    raise AssertionError("no ConfigMap with a config.yaml")


def needed_grants(mode: str, docs: list[Doc]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every API call the mode makes with the file's actions
    (pressured/k8s/access.py)."""
    types = [action["type"] for action in config_of(docs).get("actions", [])]
    return {(c.group, c.rbac_resource, c.verb) for c in access.calls(mode, access.grants_of(types))}


@pytest.mark.parametrize(
    ("name", "mode", "kind"),
    [
        ("daemonset.yaml", "node", "ClusterRole"),
        ("cluster.yaml", "cluster", "ClusterRole"),
        ("sidecar-pod.yaml", "sidecar", "Role"),
    ],
)
def test_manifest_rbac_is_exactly_what_the_mode_calls(name: str, mode: str, kind: str) -> None:
    docs = manifest(name)
    assert config_of(docs)["source"]["mode"] == mode
    assert rbac_grants(one(docs, kind)) == needed_grants(mode, docs)


def test_cluster_deployment_is_one_unprivileged_replica() -> None:
    docs = manifest("cluster.yaml")
    deployment = one(docs, "Deployment")
    spec = pod_spec(deployment)
    watcher = container(spec)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "hostPID" not in spec
    assert not any("hostPath" in volume for volume in spec["volumes"])
    assert "state_dir" not in config_of(docs), "the Deployment's pod moves between nodes"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert watcher["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert watcher["securityContext"]["allowPrivilegeEscalation"] is False


def test_sidecar_pod_shares_pids_and_drops_every_capability() -> None:
    docs = manifest("sidecar-pod.yaml")
    spec = pod_spec(one(docs, "Pod"))
    watcher = container(spec)
    app = container(spec, "app")
    security = watcher["securityContext"]

    assert spec["shareProcessNamespace"] is True
    assert "hostPID" not in spec
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    # Signalling the app needs the app's UID, not CAP_KILL: an added capability never reaches a
    # non-root process's effective set (kubernetes/kubernetes#56374), so none is added.
    assert security["capabilities"] == {"drop": ["ALL"]}

    def effective(item: Doc, key: str) -> Any:
        return item.get("securityContext", {}).get(key, spec["securityContext"].get(key))

    assert effective(watcher, "runAsUser") == effective(app, "runAsUser") != 0
    assert effective(watcher, "runAsGroup") == effective(app, "runAsGroup")
    assert "memory" in app["resources"]["limits"]  # a percentage needs a limit
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def cgroup2_memory_pressure() -> Path | None:
    """This process's memory.pressure in the cgroup2 tree, if the host has one with PSI."""
    mount_point = None
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            mount_point = fields[0].split()[4]
            break
    own = procfs.read_cgroups("self").unified
    if mount_point is None or own is None:
        return None
    path = Path(mount_point + own.rstrip("/")) / "memory.pressure"
    return path if path.exists() else None


@pytest.mark.kernel
def test_read_only_cgroup_mount_refuses_a_psi_trigger(tmp_path: Path) -> None:
    """Why the node DaemonSet mounts /sys/fs/cgroup writable: the same file that opens O_RDWR
    (a PSI trigger is armed by writing to it) fails with EROFS through a read-only bind mount."""
    pressure = cgroup2_memory_pressure()
    if pressure is None:
        pytest.skip("this host has no cgroup2 tree with PSI files")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private mount namespace needs root and unshare(1)")
    mount_point = next(p for p in pressure.parents if p.is_mount())
    relative = pressure.relative_to(mount_point)
    view = tmp_path / "view"
    view.mkdir()
    probe = (
        "import errno, os, sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))\n"
        "        print('ok')\n"
        "    except OSError as exc:\n"
        "        print(errno.errorcode[exc.errno])\n"
    )
    # The mount lives in a private namespace and disappears with the child.
    script = (
        f'mount --bind "{mount_point}" "{view}" && mount -o remount,ro,bind "{view}" && '
        f'exec "{sys.executable}" -c "$0" "{pressure}" "{view / relative}"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, probe],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip(f"no mount namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "EROFS"]
