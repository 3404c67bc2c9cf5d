# SPDX-License-Identifier: MIT
# spice-criu: `make test` sets everything up on a fresh Debian 12 machine and runs the whole suite.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST := $(VPY) -m pytest

.PHONY: setup protos lint test unit demo bench clean

-include mk/*.mk

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# a plain path entry (compat mode): the default editable finder costs ~30 ms per start
	$(VPY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(VPY) -m compileall -q spice_criu
	touch $@

protos: setup
	$(VPY) images/gen.py

lint: setup
	$(VENV)/bin/ruff check spice_criu tests compat-tests images

unit: setup
	$(PYTEST) -q tests

# the whole suite: unit tests, real-CRIU compat tests, then the kernel module in qemu
test: setup lint compat-setup rpc-deps
	$(PYTEST) -q tests compat-tests
	$(MAKE) kmod-test

# spice vs real CRIU, same image dirs, same run (BENCH_N=10 runs per tool)
bench: setup compat-setup
	$(VPY) -m compileall -q spice_criu  # fresh bytecode: an installed spice starts from its .pyc
	$(VPY) compat-tests/bench.py

# checkpoint and restore a sample process
demo: setup compat-setup
	$(VPY) compat-tests/demo.py

clean:
	rm -rf $(VENV) .kmod-ci .work
