# pressured: every target sets up what it needs (a venv in .venv, Debian packages for tests).
#   make run        pressured run with embedded defaults on this machine (Ctrl-C stops)
#   make demo       a leaking app in a limited cgroup: warn, signal, kill confirmed
#   make test       lint, types, C warnings, and every host test (unit, kernel, HTTP, Go, Lua)
#   make test-k8s   the chart and the API calls against a real kube-apiserver + etcd (scripts/k8s-lane)
#   make test-vm    the cgroup v2 + bcc tests inside a real Debian kernel under qemu
#   make bench      benchmarks; each prints one JSON object (bench-vm: the cgroup v2 ones, in the VM)
#   make lint       ruff, ruff format --check, mypy
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: run demo test test-host test-kernel test-k8s test-vm bench bench-vm lint native clean

run:
	@scripts/bootstrap
	$(PY) -m pressured run

demo:
	@scripts/bootstrap
	$(PY) -m pressured demo

lint:
	@scripts/bootstrap --dev
	.venv/bin/ruff check pressured tests bench
	.venv/bin/ruff format --check pressured tests bench
	.venv/bin/mypy

# the C core must build clean with -Wall -Wextra -Werror (the flags csrc/build_native.py gives
# cffi, which also compiles its generated wrapper with them at install time)
CFLAGS_CHECK := -Wall -Wextra -Werror -O2 -std=gnu11 -Icsrc
native:
	@for f in csrc/*.c; do gcc $(CFLAGS_CHECK) -c $$f -o /dev/null || exit 1; done
	@echo "csrc: clean with $(CFLAGS_CHECK)"

test: lint native test-host

# The k8s_real tests need binaries that take minutes to build the first time: test-k8s runs them.
test-host:
	@scripts/bootstrap --dev
	$(PY) -m pytest -m "not k8s_real" $(PYTEST_ARGS)

test-kernel:
	@scripts/bootstrap --dev
	$(PY) -m pytest -m kernel $(PYTEST_ARGS)

# Builds the lane first (once: the binaries are cached by version), then every k8s_real test.
test-k8s:
	@scripts/bootstrap --dev
	scripts/k8s-lane build
	PRESSURED_K8S_LANE=1 $(PY) -m pytest -m k8s_real $(PYTEST_ARGS)

test-vm:
	@scripts/bootstrap --dev
	scripts/vmtest -- $(CURDIR)/$(PY) -m pytest -m vm -p no:cacheprovider tests/vm $(PYTEST_ARGS)

bench:
	@scripts/bootstrap --dev
	$(PY) bench/wake_latency.py --action
	$(PY) bench/cost_growth.py
	$(PY) bench/kill_latency.py
	$(PY) bench/pprof_top.py
	$(PY) bench/live_state.py
	$(PY) bench/runtime_capture.py
	$(PY) bench/oom_risk.py
	$(MAKE) bench-vm

# cgroup v2 has no usage-threshold notifier: its detection bench runs in the VM lane's guest
bench-vm:
	@scripts/bootstrap --dev
	scripts/vmtest -- $(CURDIR)/$(PY) bench/v2_detection.py $(BENCH_VM_ARGS)

clean:
	rm -rf .venv build *.egg-info pressured/_native*.so .pytest_cache .mypy_cache .ruff_cache
