# SPDX-License-Identifier: MIT
# spice-criu: `make test` sets everything up on a fresh Debian 12 machine and runs the whole suite.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST := $(VPY) -m pytest

.PHONY: setup protos lint test unit demo clean

-include mk/*.mk

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

protos: setup
	$(VPY) images/gen.py

lint: setup
	$(VENV)/bin/ruff check spice_criu tests compat-tests images

unit: setup
	$(PYTEST) -q tests

# the whole suite: unit tests, real-CRIU compat tests, then the kernel module in qemu
test: setup lint criu
	$(PYTEST) -q tests compat-tests

clean:
	rm -rf $(VENV) .kmod-ci .work
