"""The lane itself, and the Helm chart against a real API server.

The API server is the release scripts/k8s-lane builds, with authorization (Node, RBAC) and
admission as a real cluster has them. Here: it answers as that release; RBAC refuses a
ServiceAccount until a Role grants it; helm lints the chart strictly; and what `helm template`
renders for each mode (and for each example values file) is accepted by the server with strict
field validation, dry run first and then for real, with the pod a controller would make from it
admitted under the namespace's Pod Security level. No controller-manager or kubelet runs: objects
are stored and admitted, never reconciled.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.core_v1 import Namespace, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding

from tests.k8s_real.conftest import FIELD_MANAGER, ROOT, Lane, api_error, run_lane
from tests.support.wait import wait_for

pytestmark = pytest.mark.k8s_real

CHART = ROOT / "charts" / "pressured"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
OPERATOR_CRDS = {"servicemonitors": "ServiceMonitor", "prometheusrules": "PrometheusRule"}
"""The Prometheus Operator CRDs the lane fetches (scripts/k8s-lane CRDS), by the kind each
serves."""
PSA = "pod-security.kubernetes.io/enforce"

Doc = dict[str, Any]


def chart_modes() -> list[str]:
    """The modes the chart accepts: the list its validation checks `mode` against."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    found = re.search(r'has \.Values\.mode \(list((?:\s+"[a-z-]+")+)\s*\)', helpers)
    assert found, "_helpers.tpl: no `has .Values.mode (list ...)` check found"
    return re.findall(r'"([a-z-]+)"', found.group(1))


MODES = chart_modes()
# What each mode deploys the watcher as, and the Pod Security level its namespace needs: the
# node mode's NOTES ask for privileged; the cluster mode claims to run under restricted.
WORKLOAD = {"node": "DaemonSet", "cluster": "Deployment"}
POD_SECURITY = {"node": "privileged", "cluster": "restricted"}
NODE_STATE_DIR = "/var/lib/pressured/state"
"""Where node mode mounts its host directory for state_dir (values stateDir.hostPath)."""


@pytest.fixture
def make_namespace(k8s_lane: Lane) -> Callable[..., str]:
    """A new namespace named after `prefix`, with `labels`. Never deleted: nothing would finalize
    it without a controller-manager, and the lane is thrown away with the session."""

    def make(prefix: str, labels: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        k8s_lane.client.create(Namespace(metadata=ObjectMeta(name=name, labels=labels)))
        return name

    return make


# ---------------------------------------------------------------- raw object requests


class Api:
    """POST and GET of arbitrary objects as the admin, their paths found through the server's
    discovery (so a kind the server does not serve fails here, not in a table of ours)."""

    def __init__(self, lane: Lane) -> None:
        self.http = lane.admin_http
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}

    def _prefix(self, api_version: str) -> str:
        return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"

    def resources(self, api_version: str, refresh: bool = False) -> dict[str, tuple[str, bool]]:
        """kind -> (plural, namespaced) of one group version."""
        if refresh or api_version not in self._resources:
            r = self.http.get(self._prefix(api_version))
            if r.status_code == 404:
                return {}
            assert r.status_code == 200, api_error(r)
            self._resources[api_version] = {
                res["kind"]: (res["name"], res["namespaced"])
                for res in r.json()["resources"]
                if "/" not in res["name"]
            }
        return self._resources[api_version]

    def collection(self, doc: Doc, namespace: str) -> str:
        api_version, kind = doc["apiVersion"], doc["kind"]
        found = self.resources(api_version).get(kind)
        assert found, f"the API server serves no {kind} in {api_version}"
        plural, namespaced = found
        if namespaced:
            return f"{self._prefix(api_version)}/namespaces/{namespace}/{plural}"
        return f"{self._prefix(api_version)}/{plural}"

    def create(
        self, doc: Doc, namespace: str, dry_run: bool = False, yaml_text: str | None = None
    ) -> httpx.Response:
        """POST `doc` as `kubectl create` would, unknown or duplicate fields refused
        (fieldValidation=Strict) rather than dropped. With `yaml_text` (the same object as
        rendered) that text is sent as it is, so that the server sees a key written twice."""
        url = self.collection(doc, namespace)
        params = {"fieldValidation": "Strict", "fieldManager": FIELD_MANAGER}
        if dry_run:
            params["dryRun"] = "All"
        if yaml_text is None:
            return self.http.post(url, params=params, json=doc)
        return self.http.post(
            url,
            params=params,
            content=yaml_text.encode(),
            headers={"Content-Type": "application/yaml"},
        )

    def get(self, doc: Doc, namespace: str) -> httpx.Response:
        return self.http.get(f"{self.collection(doc, namespace)}/{doc['metadata']['name']}")


@pytest.fixture
def api(k8s_lane: Lane) -> Api:
    return Api(k8s_lane)


def warnings_of(response: httpx.Response) -> list[str]:
    return response.headers.get_list("warning")


@dataclass(frozen=True)
class Manifest:
    text: str
    """One YAML document as helm rendered it."""
    doc: Doc


def render(lane: Lane, release: str, namespace: str, *args: str) -> list[Manifest]:
    """`helm template` for the lane's Kubernetes release, one Manifest per object."""
    out = lane.helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        lane.version,
        *args,
    ).stdout
    texts = re.split(r"^---[ \t]*$", out, flags=re.MULTILINE)
    return [Manifest(text, doc) for text in texts if (doc := yaml.safe_load(text))]


def workload_pod(manifests: list[Manifest]) -> Doc:
    """The pod a DaemonSet or Deployment controller would create from the rendered template."""
    (workload,) = [m.doc for m in manifests if m.doc["kind"] in ("DaemonSet", "Deployment")]
    template = workload["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": f"{workload['metadata']['name']}-probe"},
        "spec": template["spec"],
    }


def apply_all(api: Api, manifests: list[Manifest], namespace: str) -> None:
    """Dry run every object (nothing is stored), then create each for real; the server must
    accept each without a warning (deprecation, Pod Security, unknown field)."""
    for m in manifests:
        doc = m.doc
        what = f"{doc['kind']} {doc['metadata']['name']}"
        r = api.create(doc, namespace, dry_run=True, yaml_text=m.text)
        assert r.status_code == 201, f"dry run of {what}: {r.status_code} {api_error(r)}"
        assert not warnings_of(r), f"dry run of {what}: {warnings_of(r)}"
        assert api.get(doc, namespace).status_code == 404, f"the dry run stored {what}"
    for m in manifests:
        doc = m.doc
        what = f"{doc['kind']} {doc['metadata']['name']}"
        r = api.create(doc, namespace, yaml_text=m.text)
        assert r.status_code == 201, f"create {what}: {r.status_code} {api_error(r)}"
        assert not warnings_of(r), f"create {what}: {warnings_of(r)}"
        assert api.get(doc, namespace).status_code == 200, f"{what} was not stored"


@pytest.fixture(scope="session")
def operator_crds(k8s_lane: Lane) -> None:
    """The Prometheus Operator's own ServiceMonitor and PrometheusRule CRDs (from its pinned
    module source, fetched by scripts/k8s-lane build), served by the lane: what the chart's
    optional objects are checked against."""
    api = Api(k8s_lane)
    for name, kind in OPERATOR_CRDS.items():
        path = Path(k8s_lane.env["K8S_LANE_CRDS"]) / f"{name}.yaml"
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        r = api.create(crd, "")
        assert r.status_code in (201, 409), f"{path}: {api_error(r)}"

        def established(crd: Doc = crd, kind: str = kind) -> bool:
            got = api.get(crd, "").json()
            conditions = got.get("status", {}).get("conditions", [])
            served = kind in api.resources("monitoring.coreos.com/v1", refresh=True)
            return served and any(
                c["type"] == "Established" and c["status"] == "True" for c in conditions
            )

        wait_for(established, 15.0, f"the {kind} CRD to be served", poll=0.1)


# ---------------------------------------------------------------- the lane


def test_api_server_is_ready_and_is_the_release_built(k8s_lane: Lane) -> None:
    r = k8s_lane.admin_http.get("/readyz", params={"verbose": "true"})
    assert r.status_code == 200, r.text
    assert "[+]etcd ok" in r.text
    assert "readyz check passed" in r.text

    version = k8s_lane.admin_http.get("/version").json()
    assert (version["major"], version["minor"]) == ("1", "34")
    assert version["gitVersion"] == k8s_lane.version
    assert k8s_lane.version.startswith("v1.34.")


def test_a_lane_stops_on_sigterm_and_a_second_build_is_the_cache(
    own_lane: Callable[..., Lane],
) -> None:
    lane = own_lane()
    pids = [int(lane.env[k]) for k in ("K8S_LANE_APISERVER_PID", "K8S_LANE_ETCD_PID")]
    assert all(psutil.pid_exists(pid) for pid in pids)
    stop = run_lane("stop", str(lane.dir))
    assert stop.returncode == 0, stop.stderr
    assert "SIGKILL" not in stop.stderr, "each stopped within its grace after SIGTERM"

    def gone() -> bool:
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                continue
        return True

    wait_for(gone, 30.0, "the lane's etcd and kube-apiserver to exit")
    build = run_lane("build")
    assert build.returncode == 0, build.stderr
    assert "cached in" in build.stderr and "building" not in build.stderr


def test_admin_client_from_the_kubeconfig_is_in_system_masters(k8s_lane: Lane) -> None:
    r = k8s_lane.admin_http.post(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert r.status_code == 201, api_error(r)
    assert "system:masters" in r.json()["status"]["userInfo"]["groups"]
    # The lightkube client, from the kubeconfig the lane wrote, reaches it too.
    names = {ns.metadata.name for ns in k8s_lane.client.list(Namespace) if ns.metadata}
    assert {"default", "kube-system"} <= names


def test_rbac_forbids_a_service_account_until_a_role_grants_it(
    k8s_lane: Lane, make_namespace: Callable[..., str]
) -> None:
    client = k8s_lane.client
    ns = make_namespace("rbac")
    client.create(ServiceAccount(metadata=ObjectMeta(name="probe")), namespace=ns)
    # A bound token through the TokenRequest API, as the kubelet mounts one in a pod.
    requested = client.create(
        ServiceAccount.Token(
            metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=[], expirationSeconds=600)
        ),
        name="probe",
        namespace=ns,
    )
    assert requested.status is not None
    token = requested.status.token

    with k8s_lane.token_http(token) as sa:
        # Authenticated as the ServiceAccount (a 401 would mean the token was not accepted).
        who = sa.post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        assert who.status_code == 201, api_error(who)
        assert who.json()["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:probe"

        pods = f"/api/v1/namespaces/{ns}/pods"
        r = sa.get(pods)
        assert r.status_code == 403, api_error(r)
        assert r.json()["reason"] == "Forbidden"
        assert 'cannot list resource "pods"' in r.json()["message"]

        client.create(
            Role(
                metadata=ObjectMeta(name="pod-lister"),
                rules=[PolicyRule(apiGroups=[""], resources=["pods"], verbs=["list"])],
            ),
            namespace=ns,
        )
        client.create(
            RoleBinding(
                metadata=ObjectMeta(name="probe-lists-pods"),
                roleRef=RoleRef(
                    apiGroup="rbac.authorization.k8s.io", kind="Role", name="pod-lister"
                ),
                subjects=[Subject(kind="ServiceAccount", name="probe", namespace=ns)],
            ),
            namespace=ns,
        )
        # The authorizer reads RBAC objects from its informers: a moment after the binding.
        r = wait_for(
            lambda: (resp := sa.get(pods)).status_code == 200 and resp,
            15.0,
            "the RoleBinding to take effect",
            poll=0.1,
        )
        assert r.json()["kind"] == "PodList"
        # Exactly what was granted: not another verb, resource or namespace.
        assert sa.get(f"{pods}/nope").status_code == 403
        assert sa.get(f"/api/v1/namespaces/{ns}/secrets").status_code == 403
        assert sa.get("/api/v1/namespaces/default/pods").status_code == 403


# ---------------------------------------------------------------- helm and the chart


def test_helm_runs(k8s_lane: Lane) -> None:
    out = k8s_lane.helm("version", "--short").stdout
    assert out.startswith("v3."), out


def test_chart_modes_are_found() -> None:
    assert MODES, "no modes found in _helpers.tpl"
    default = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["mode"]
    assert default in MODES
    assert set(MODES) <= set(WORKLOAD), f"a mode this test does not know: {MODES}"


@pytest.mark.parametrize(
    "values",
    [["--set", f"mode={mode}"] for mode in MODES] + [["-f", str(path)] for path in EXAMPLES],
    ids=[f"mode={mode}" for mode in MODES] + [path.stem for path in EXAMPLES],
)
def test_helm_lint_strict_passes(k8s_lane: Lane, values: list[str]) -> None:
    proc = k8s_lane.helm("lint", "--strict", str(CHART), *values, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("mode", MODES)
def test_chart_renders_and_the_api_server_accepts_it(
    k8s_lane: Lane, api: Api, make_namespace: Callable[..., str], mode: str
) -> None:
    level = POD_SECURITY[mode]
    ns = make_namespace(f"chart-{mode}", {PSA: level})
    manifests = render(k8s_lane, f"t-{mode}", ns, "--set", f"mode={mode}")
    kinds = {m.doc["kind"] for m in manifests}
    assert WORKLOAD[mode] in kinds
    assert {"ConfigMap", "ServiceAccount", "Service", "ClusterRole", "ClusterRoleBinding"} <= kinds

    apply_all(api, manifests, ns)

    # The pod its controller would create is admitted: the ServiceAccount exists, the priority
    # class resolves, and Pod Security enforces the namespace's level.
    pod = workload_pod(manifests)
    r = api.create(pod, ns, dry_run=True)
    assert r.status_code == 201, f"a {mode}-mode pod under {level}: {api_error(r)}"
    assert not warnings_of(r), warnings_of(r)
    if mode == "node":
        # ...and the NOTES' label is needed: baseline refuses the privileged, hostPID pod.
        baseline = make_namespace("chart-node-baseline", {PSA: "baseline"})
        sa = next(m.doc for m in manifests if m.doc["kind"] == "ServiceAccount")
        sa = {**sa, "metadata": {**sa["metadata"], "namespace": baseline}}
        assert api.create(sa, baseline).status_code == 201
        r = api.create(pod, baseline, dry_run=True)
        assert r.status_code == 403, api_error(r)
        assert "violates PodSecurity" in api_error(r)
        assert '"node-state"' in api_error(r), "the state's hostPath is one more reason"


@pytest.mark.parametrize(
    ("args", "state_dir", "host_path"),
    [
        ((), NODE_STATE_DIR, "/var/lib/pressured"),
        (("--set", "stateDir.hostPath=/srv/pressured"), NODE_STATE_DIR, "/srv/pressured"),
        (("--set", "stateDir.hostPath="), None, None),
        (("--set", "config.state_dir=/data"), "/data", None),
        (("--set", "mode=cluster"), None, None),
    ],
    ids=["default", "elsewhere", "off", "users-own", "cluster"],
)
def test_node_mode_keeps_its_kills_in_a_host_directory(
    k8s_lane: Lane, args: tuple[str, ...], state_dir: str | None, host_path: str | None
) -> None:
    """The kill journal outlives the pod in node mode only (a cluster-mode pod moves)."""
    manifests = render(k8s_lane, "t", "ns", *args)
    (cm,) = [m.doc for m in manifests if m.doc["kind"] == "ConfigMap"]
    assert yaml.safe_load(cm["data"]["config.yaml"]).get("state_dir") == state_dir
    spec = workload_pod(manifests)["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["state"] == "/var/lib/pressured" and "emptyDir" in volumes["state"]
    if host_path is None:
        assert "node-state" not in volumes and "node-state" not in mounts
    else:
        assert volumes["node-state"]["hostPath"] == {"path": host_path, "type": "DirectoryOrCreate"}
        assert mounts["node-state"] == state_dir


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
@pytest.mark.usefixtures("operator_crds")
def test_chart_example_is_accepted_by_the_api_server(
    k8s_lane: Lane, api: Api, make_namespace: Callable[..., str], example: Path
) -> None:
    mode = yaml.safe_load(example.read_text(encoding="utf-8")).get("mode", "node")
    ns = make_namespace("example", {PSA: POD_SECURITY[mode]})
    manifests = render(k8s_lane, f"ex-{example.stem}"[:40], ns, "-f", str(example))
    apply_all(api, manifests, ns)
    r = api.create(workload_pod(manifests), ns, dry_run=True)
    assert r.status_code == 201, api_error(r)


@pytest.mark.parametrize("mode", MODES)
def test_helm_install_and_uninstall(
    k8s_lane: Lane, make_namespace: Callable[..., str], mode: str
) -> None:
    """helm itself against the server: install (its own schema and server checks), a
    deployed release, and uninstall removing what it made."""
    ns = make_namespace(f"helm-{mode}", {PSA: POD_SECURITY[mode]})
    release = f"h-{mode}"
    k8s_lane.helm("install", release, str(CHART), "--namespace", ns, "--set", f"mode={mode}")
    status = k8s_lane.helm("status", release, "--namespace", ns, "-o", "json").stdout
    assert yaml.safe_load(status)["info"]["status"] == "deployed"
    fullname = f"{release}-pressured"
    workload = {"node": "daemonsets", "cluster": "deployments"}[mode]
    http = k8s_lane.admin_http
    assert http.get(f"/apis/apps/v1/namespaces/{ns}/{workload}/{fullname}").status_code == 200

    k8s_lane.helm("uninstall", release, "--namespace", ns, "--wait", "--timeout", "60s")
    assert http.get(f"/apis/apps/v1/namespaces/{ns}/{workload}/{fullname}").status_code == 404
    crb = f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{fullname}"
    assert http.get(crb).status_code == 404
