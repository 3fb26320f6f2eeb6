"""Who is watched: local cgroups, the sidecar's own pod, every pod of a node, or a cluster."""
