"""Kubernetes: identity from cgroup paths, one API client, the pod cache, pod annotations.

    identity     pod UID / container ID / runtime / QoS from a kubelet cgroup path (pure)
    client       KubeClient: lightkube over in-cluster or kubeconfig credentials
    access       every API request of each mode (verb, resource, scope): the RBAC table
    podcache     PodCache: pods of a selection, kept current by one watch
    annotations  pressured.io/* annotations -> threshold overrides and pprof settings

lightkube is imported only when a client is built, so modes without Kubernetes never load it.
"""
