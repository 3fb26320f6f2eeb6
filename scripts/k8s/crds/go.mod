// The Prometheus Operator's CustomResourceDefinitions (ServiceMonitor, PrometheusRule) that the
// chart's optional objects are checked against on the lane: taken from this module's source
// (example/prometheus-operator-crd), pinned with its sum in go.sum. Nothing here is built.
module pressured.test/k8s-lane/crds

go 1.26

require github.com/prometheus-operator/prometheus-operator v0.86.1
