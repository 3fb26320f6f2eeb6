"""The one Kubernetes client: lightkube (httpx) over in-cluster or kubeconfig credentials.

Everything pressured asks of the API goes through ``KubeClient``: pod lists and watches, Events
(aggregated the way the kubelet's recorder does, so ``kubectl describe`` shows "x3 over 2m"),
Evictions (policy/v1, which honours PodDisruptionBudgets) and a node's kubelet summary through
the API server's ``nodes/{name}/proxy`` subresource. Objects cross this boundary as plain JSON
data. Every lightkube/httpx failure becomes a KubernetesError naming the request
(``raise ... from exc``); a refused eviction (429) is EvictionRefused, a watch whose
resourceVersion was compacted away (410) is ResourceExpired, and an RBAC refusal (403) is
Forbidden, naming what was refused and the grant that allows it. The requests each mode makes
are the table in pressured/k8s/access.py.

lightkube is imported lazily (modes without Kubernetes never load it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as url_quote
from urllib.parse import urlencode

from pressured.errors import ConfigError, KubernetesError, quote
from pressured.k8s.access import forbidden_message

if TYPE_CHECKING:
    import lightkube

log = logging.getLogger("pressured.k8s.client")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
COMPONENT = "pressured"
SECTION_KEYS = frozenset({"node_name", "kubeconfig", "pod_uid", "pod_name", "pod_namespace"})
ALL_NAMESPACES = "*"
EVENT_TTL = 3600.0
"""The API server's default --event-ttl: an Event not written for this long is gone."""


class ResourceExpired(KubernetesError):
    """410 Gone: the watch's resourceVersion is too old; list again."""


class EvictionRefused(KubernetesError):
    """429 from the Eviction API: a PodDisruptionBudget does not allow it now."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(KubernetesError):
    """A 4xx the API server would answer again (bad request, invalid, forbidden, not found):
    sending the same request later cannot help."""


class NotFound(Rejected):
    """404: the object does not exist (any more)."""


class Forbidden(Rejected):
    """403: RBAC does not allow the request; the message names the verb, the resource, the
    namespace, the ServiceAccount and the grant that would allow it (access.forbidden_message)."""


@dataclass(frozen=True)
class PodList:
    items: list[dict[str, Any]]
    resource_version: str


@dataclass
class _Recorded:
    name: str
    namespace: str
    count: int
    written: float
    """Monotonic time of the last write, to forget Events the API server has dropped."""


@dataclass(frozen=True)
class EventResult:
    name: str
    count: int
    created: bool


def rfc3339_seconds(wall: float) -> str:
    """The seconds-precision timestamp core/v1 Event first/lastTimestamp carry."""
    return _dt.datetime.fromtimestamp(wall, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


REPLY_QUOTE_LIMIT = 200
"""Characters of an API server's message an error shows: enough for an RBAC refusal whole."""


def _reply(message: str) -> str:
    """The API server's own words for an error message: quoted, cut when long."""
    return quote(message, REPLY_QUOTE_LIMIT)


def _status_message(resp: Any) -> str:
    try:
        data = resp.json()
    except ValueError:
        return str(resp.text[: REPLY_QUOTE_LIMIT + 1])
    if isinstance(data, dict):
        return str(data.get("message") or data.get("reason") or "")
    return ""


def _raise_status(what: str, code: int, message: str) -> None:
    text = f"{what}: HTTP {code}: {_reply(message)}"
    if code == 410:
        raise ResourceExpired(text)
    if code == 404:
        raise NotFound(text)
    if code == 403:
        raise Forbidden(forbidden_message(what, message))
    if code in (400, 422):
        raise Rejected(text)
    raise KubernetesError(text)


def _plain(obj: Any) -> dict[str, Any]:
    """A lightkube object as JSON data (lazy objects hand back what the server sent)."""
    data = obj.to_dict()
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    return data


def _model(resource: Any, data: dict[str, Any]) -> Any:
    return resource.from_dict(data)


def _str_option(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string (got {quote(value)})")
    return value


def validate_section(
    section: Mapping[str, Any] | None, where: str = "kubernetes"
) -> dict[str, str | None]:
    """The ``kubernetes`` section as strings (None when unset); unknown keys are errors."""
    if section is None:
        return dict.fromkeys(SECTION_KEYS)
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: expected a mapping (got {quote(section)})")
    problems = [
        f"{where}.{key}: unknown key (known: {', '.join(sorted(SECTION_KEYS))})"
        for key in sorted(set(section) - SECTION_KEYS)
    ]
    out: dict[str, str | None] = {}
    for key in sorted(SECTION_KEYS):
        try:
            out[key] = _str_option(section, key, where)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return out


class KubeClient:
    """A lightkube client plus the little state pressured keeps about what it sent."""

    def __init__(
        self,
        client: lightkube.Client,
        *,
        server: str,
        credentials: str,
        node_name: str | None = None,
        host: str | None = None,
    ) -> None:
        self._client = client
        self.server = server.rstrip("/")
        self.credentials = credentials
        """Where the credentials came from: "in-cluster" or the kubeconfig path."""
        self.node_name = node_name
        self.host = host or node_name or os.uname().nodename
        self._events: dict[tuple[str, str, str], _Recorded] = {}
        self._events_lock = threading.Lock()
        self.closed = False

    # ---- construction
    @classmethod
    def from_config(
        cls,
        section: Mapping[str, Any] | None,
        where: str = "kubernetes",
        *,
        service_account_dir: str = SERVICE_ACCOUNT_DIR,
        environ: Mapping[str, str] | None = None,
        timeout_seconds: float = 10.0,
    ) -> KubeClient:
        """Credentials, in order: ``<where>.kubeconfig``; in-cluster (KUBERNETES_SERVICE_HOST
        and the service-account token); the KUBECONFIG variable; ~/.kube/config.
        ConfigError names what is missing or unreadable."""
        import httpx  # noqa: PLC0415
        import lightkube  # noqa: PLC0415
        from lightkube.config.kubeconfig import KubeConfig  # noqa: PLC0415
        from lightkube.config.models import Cluster, User  # noqa: PLC0415
        from lightkube.core.exceptions import ConfigError as LkConfigError  # noqa: PLC0415

        env = os.environ if environ is None else environ
        opts = validate_section(section, where)
        node_name = opts["node_name"] or env.get("NODE_NAME") or None
        path = opts["kubeconfig"]
        key = f"{where}.kubeconfig"
        token_file = os.path.join(service_account_dir, "token")
        if path is None and env.get("KUBERNETES_SERVICE_HOST") and os.path.exists(token_file):
            host = env["KUBERNETES_SERVICE_HOST"]
            port = env.get("KUBERNETES_SERVICE_PORT") or "443"
            if ":" in host:
                host = f"[{host}]"
            ca = os.path.join(service_account_dir, "ca.crt")
            if not os.path.exists(ca):
                raise ConfigError(f"{where}: in-cluster credentials without {ca}")
            ns_file = os.path.join(service_account_dir, "namespace")
            namespace = None
            if os.path.exists(ns_file):
                with open(ns_file) as f:
                    namespace = f.read().strip() or None
            config = KubeConfig.from_one(
                cluster=Cluster(server=f"https://{host}:{port}", certificate_auth=ca),
                # token_file: projected tokens rotate; lightkube re-reads it on 401.
                user=User(token_file=token_file),
                namespace=namespace,
            )
            credentials = "in-cluster"
        else:
            if path is None:
                key = "KUBECONFIG"
                path = (env.get("KUBECONFIG") or "").split(os.pathsep)[0] or None
            if path is None:
                key = "~/.kube/config"
                default = os.path.expanduser("~/.kube/config")
                if not os.path.exists(default):
                    raise ConfigError(
                        f"{where}: no Kubernetes credentials: not in a pod "
                        f"(KUBERNETES_SERVICE_HOST unset or no {token_file}) and no kubeconfig "
                        f"({where}.kubeconfig, "
                        "KUBECONFIG or ~/.kube/config)"
                    )
                path = default
            try:
                config = KubeConfig.from_file(path)
            except LkConfigError as exc:
                raise ConfigError(f"{key}: {exc} (got {quote(path)})") from exc
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{key}: not a usable kubeconfig: {exc} (got {quote(path)})"
                ) from exc
            credentials = path
        try:
            single = config.get()
            assert single is not None
            client = lightkube.Client(
                config=single, timeout=httpx.Timeout(timeout_seconds), field_manager=COMPONENT
            )
        except LkConfigError as exc:
            raise ConfigError(f"{key}: {exc} (got {quote(credentials)})") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{key}: cannot build a client: {exc} (got {quote(credentials)})"
            ) from exc
        return cls(
            client, server=single.cluster.server, credentials=credentials, node_name=node_name
        )

    def close(self) -> None:
        self.closed = True
        self._client.close()

    # ---- error translation
    def _url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        return f"{self.server}/{path.lstrip('/')}" + (f"?{query}" if query else "")

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        import httpx  # noqa: PLC0415
        from lightkube import ApiError  # noqa: PLC0415

        try:
            yield
        except ApiError as exc:
            code = exc.status.code or (exc.response.status_code if exc.response is not None else 0)
            reason = f" {exc.status.reason}" if exc.status.reason else ""
            try:
                _raise_status(what, code, f"{exc.status.message or ''}{reason}".strip())
            except KubernetesError as translated:
                raise translated from exc
        except httpx.HTTPStatusError as exc:
            try:
                body = _status_message(exc.response)
            except httpx.ResponseNotRead:
                body = ""
            try:
                _raise_status(what, exc.response.status_code, body)
            except KubernetesError as translated:
                raise translated from exc
        except httpx.HTTPError as exc:
            raise KubernetesError(f"{what}: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            raise KubernetesError(f"{what}: unusable answer: {exc}") from exc

    @property
    def _generic(self) -> Any:
        # lightkube's Client.list/watch take selectors as dicts; the configured selectors are
        # strings, so they go through the generic layer that builds the same requests.
        return self._client._client

    # ---- pods
    def list_pods(
        self,
        *,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
    ) -> PodList:
        from lightkube.core.exceptions import NotReadyError  # noqa: PLC0415
        from lightkube.resources.core_v1 import Pod  # noqa: PLC0415

        params = {"fieldSelector": field_selector, "labelSelector": label_selector}
        path = "api/v1/pods" if not namespace else f"api/v1/namespaces/{namespace}/pods"
        with self._calling(f"GET {self._url(path, params)}"):
            br = self._generic.prepare_request(
                "list", res=Pod, namespace=namespace or ALL_NAMESPACES, params=params
            )
            listing = self._generic.list(br)
            items = [_plain(p) for p in listing]
            try:
                rv = str(listing.resourceVersion)
            except NotReadyError:  # a list without metadata.resourceVersion
                rv = ""
        return PodList(items, rv)

    def watch_pods(
        self,
        *,
        resource_version: str,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        server_timeout: int = 290,
    ) -> Generator[tuple[str, dict[str, Any]], None, None]:
        """(type, pod) of one watch request starting after ``resource_version``; it ends
        when the server closes the stream (``timeoutSeconds``). An ERROR event with 410 raises
        ResourceExpired; other failures KubernetesError. The caller resumes from the last
        resourceVersion it saw."""
        import httpx  # noqa: PLC0415
        from lightkube.resources.core_v1 import Pod  # noqa: PLC0415

        params: dict[str, Any] = {
            "fieldSelector": field_selector,
            "labelSelector": label_selector,
            "resourceVersion": resource_version or None,
            "timeoutSeconds": server_timeout,
            "allowWatchBookmarks": "true",
        }
        path = "api/v1/pods" if not namespace else f"api/v1/namespaces/{namespace}/pods"
        what = f"WATCH {self._url(path, params)}"
        gc = self._generic
        with self._calling(what):
            br = gc.prepare_request(
                "list", res=Pod, namespace=namespace or ALL_NAMESPACES, watch=True, params=params
            )
            # A read timeout a little past the server's own ends a silently dead connection;
            # lightkube's watch has none, and leaves the response open when an ERROR arrives.
            timeout = httpx.Timeout(10.0, read=server_timeout + 30.0)
            req = gc._client.build_request(br.method, br.url, params=br.params, timeout=timeout)
            resp = gc._client.send(req, stream=True)
        try:
            with self._calling(what):
                if resp.status_code >= 400:
                    resp.read()
                    _raise_status(what, resp.status_code, _status_message(resp))
                lines = resp.iter_lines()
            while True:
                with self._calling(what):
                    line = next(lines, None)
                    if line is None:
                        return
                    if not line.strip():
                        continue
                    event = json.loads(line)
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise KubernetesError(
                        f"{what}: a watch line that is not an event: {quote(line, 120)}"
                    )
                kind = str(event.get("type"))
                obj: dict[str, Any] = event["object"]
                if kind == "ERROR":
                    code = obj.get("code")
                    _raise_status(
                        what, code if isinstance(code, int) else 0, str(obj.get("message") or "")
                    )
                yield kind, obj
        finally:
            resp.close()

    def get_pod(self, name: str, namespace: str) -> dict[str, Any]:
        from lightkube.resources.core_v1 import Pod  # noqa: PLC0415

        with self._calling(f"GET {self._url(f'api/v1/namespaces/{namespace}/pods/{name}')}"):
            pod = self._client.get(Pod, name, namespace=namespace)
            out = _plain(pod)
        return out

    # ---- events
    def list_events(
        self, *, namespace: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        from lightkube.resources.core_v1 import Event  # noqa: PLC0415

        params = {"fieldSelector": field_selector}
        path = "api/v1/events" if not namespace else f"api/v1/namespaces/{namespace}/events"
        with self._calling(f"GET {self._url(path, params)}"):
            br = self._generic.prepare_request(
                "list", res=Event, namespace=namespace or ALL_NAMESPACES, params=params
            )
            return [_plain(e) for e in self._generic.list(br)]

    def record_event(
        self,
        *,
        namespace: str,
        pod_name: str,
        pod_uid: str,
        reason: str,
        message: str,
        event_type: str = "Warning",
        container: str | None = None,
        occurrences: int = 1,
        wall: float | None = None,
    ) -> EventResult:
        """A core/v1 Event on a pod, aggregated: the first for (pod, container, reason) is
        created; repeats PATCH its count, lastTimestamp and message, as the kubelet's recorder
        does. ``occurrences`` folds in repeats a rate limit held back. If the Event expired
        (the API keeps them an hour), a new one is created."""
        from lightkube.resources.core_v1 import Event  # noqa: PLC0415
        from lightkube.types import PatchType  # noqa: PLC0415

        now = rfc3339_seconds(time.time() if wall is None else wall)
        key = (pod_uid, container or "", reason)
        with self._events_lock:
            known = self._events.get(key)
        if known is not None:
            count = known.count + occurrences
            path = f"api/v1/namespaces/{known.namespace}/events/{known.name}"
            try:
                with self._calling(f"PATCH {self._url(path)}"):
                    self._client.patch(
                        Event,
                        known.name,
                        {"count": count, "lastTimestamp": now, "message": message},
                        namespace=known.namespace,
                        patch_type=PatchType.MERGE,
                    )
            except NotFound:
                log.debug("event %s/%s expired; creating a new one", known.namespace, known.name)
            else:
                with self._events_lock:
                    known.count = count
                    known.written = time.monotonic()
                return EventResult(known.name, count, created=False)
        name = f"{pod_name}.{time.time_ns():x}"
        involved: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod_name,
            "namespace": namespace,
            "uid": pod_uid,
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": event_type,
            "count": occurrences,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": COMPONENT, "host": self.host},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.host,
        }
        with self._calling(f"POST {self._url(f'api/v1/namespaces/{namespace}/events')}"):
            self._client.create(_model(Event, body), namespace=namespace)
        with self._events_lock:
            written = time.monotonic()
            for old in [k for k, r in self._events.items() if written - r.written > EVENT_TTL]:
                del self._events[old]
            self._events[key] = _Recorded(name, namespace, occurrences, written)
        return EventResult(name, occurrences, created=True)

    # ---- eviction
    def evict(
        self,
        name: str,
        namespace: str,
        *,
        grace_period_seconds: int | None = None,
    ) -> None:
        """POST a policy/v1 Eviction. A PodDisruptionBudget's refusal (429) raises
        EvictionRefused once; the caller decides whether to try again later."""
        import httpx  # noqa: PLC0415
        from lightkube import ApiError  # noqa: PLC0415
        from lightkube.resources.core_v1 import PodEviction  # noqa: PLC0415

        body: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        if grace_period_seconds is not None:
            body["deleteOptions"] = {"gracePeriodSeconds": grace_period_seconds}
        what = f"POST {self._url(f'api/v1/namespaces/{namespace}/pods/{name}/eviction')}"
        with self._calling(what):
            try:
                self._client.create(_model(PodEviction, body), name, namespace=namespace)
            except httpx.HTTPStatusError as exc:  # lightkube's ApiError is one
                if exc.response is None or exc.response.status_code != 429:
                    raise
                detail = _status_message(exc.response)
                if isinstance(exc, ApiError):
                    causes = exc.status.details.causes if exc.status.details else None
                    detail = "; ".join(
                        [exc.status.message or "", *(c.message for c in causes or [] if c.message)]
                    )
                retry = exc.response.headers.get("Retry-After")
                try:
                    retry_after = float(retry) if retry else None
                except ValueError:
                    retry_after = None
                raise EvictionRefused(f"{what}: HTTP 429: {_reply(detail)}", retry_after) from exc

    # ---- kubelet through the API server
    def node_summary(self, node: str) -> dict[str, Any]:
        """The kubelet's /stats/summary of ``node`` through nodes/{name}/proxy (the API
        server's credentials to the kubelet; RBAC: nodes/proxy get)."""
        path = f"api/v1/nodes/{url_quote(node, safe='')}/proxy/stats/summary"
        what = f"GET {self._url(path)}"
        with self._calling(what):
            # The proxy subresource has no lightkube resource; the request goes through the
            # client's own httpx session, whose base URL and auth come from the kubeconfig.
            resp = self._generic._client.get(path)
            resp.raise_for_status()
            data = resp.json()
        if not isinstance(data, dict):
            raise KubernetesError(f"{what}: expected a JSON object, got {type(data).__name__}")
        return data

    @property
    def namespace(self) -> str:
        """The namespace of the credentials' context (in a pod: its own), as kubectl uses."""
        return str(getattr(self._client, "namespace", None) or "default")

    def pod_proxy_json(
        self, name: str, namespace: str, port: int, path: str, *, max_bytes: int = 8 << 20
    ) -> dict[str, Any]:
        """GET ``path`` of a pod's ``port`` through pods/{name}:{port}/proxy (RBAC: pods/proxy
        get), a JSON object of at most ``max_bytes``."""
        sub = f"{url_quote(name, safe='')}:{int(port)}"
        api = f"api/v1/namespaces/{url_quote(namespace, safe='')}/pods/{sub}/proxy/"
        api += path.lstrip("/")
        what = f"GET {self._url(api)}"
        with self._calling(what):
            with self._generic._client.stream("GET", api) as resp:
                if resp.status_code >= 400:
                    resp.read()
                resp.raise_for_status()
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise KubernetesError(f"{what}: answer larger than {max_bytes} bytes")
            data = json.loads(body)
        if not isinstance(data, dict):
            raise KubernetesError(f"{what}: expected a JSON object, got {type(data).__name__}")
        return data

    def list_nodes(self) -> list[dict[str, Any]]:
        from lightkube.resources.core_v1 import Node  # noqa: PLC0415

        with self._calling(f"GET {self._url('api/v1/nodes')}"):
            return [_plain(n) for n in self._client.list(Node)]
