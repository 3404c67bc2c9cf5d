# SPDX-License-Identifier: MIT
# spice as `criu`: runc, containerd (through runc), podman, crun (libcriu), go-criu and pycriu all exec
# `criu swrk <fd>` from $PATH. `make install-criu-shim` writes a `criu` that runs this checkout's spice
# into CRIU_SHIM_DIR; put that directory first in the PATH of whatever runs runc/crun/podman, e.g.
#   make install-criu-shim && PATH=/usr/local/lib/spice-criu/bin:$PATH runc checkpoint ...
# (CRIU_SHIM_DIR=/usr/local/sbin replaces criu for everything on the machine). `pip install` of the
# package also gives a `criu` console script in its bin directory (pyproject.toml [project.scripts]).
CRIU_SHIM_DIR ?= /usr/local/lib/spice-criu/bin
SHIM_PY := $(abspath $(VPY))

.PHONY: install-criu-shim uninstall-criu-shim bench-rpc rpc-deps

install-criu-shim:
	@test -x $(SHIM_PY) || { echo "no $(SHIM_PY): run make setup first" >&2; exit 1; }
	mkdir -p $(CRIU_SHIM_DIR)
	printf '#!%s\n# SPDX-License-Identifier: MIT\n# spice-criu installed as criu (make install-criu-shim)\nfrom spice_criu.rpc_criu import main\nmain()\n' \
		'$(SHIM_PY)' > $(CRIU_SHIM_DIR)/.criu.tmp
	chmod 755 $(CRIU_SHIM_DIR)/.criu.tmp
	mv -f $(CRIU_SHIM_DIR)/.criu.tmp $(CRIU_SHIM_DIR)/criu
	@echo "spice is criu: $(CRIU_SHIM_DIR)/criu (put $(CRIU_SHIM_DIR) first in PATH)"

uninstall-criu-shim:
	rm -f $(CRIU_SHIM_DIR)/criu

# a restore over RPC (pycriu as the client): spice swrk vs criu swrk, same images, same run
bench-rpc: setup compat-setup
	$(VPY) compat-tests/test_rpc_bench.py

# what compat-tests/test_rpc_runc.py needs: runc (Debian's 1.1.x, which execs `criu swrk 3` from $PATH)
# and a static busybox for the container's rootfs; iptables: criu locks a dumped network namespace
# with iptables-restore (without it, criu cannot dump a container with its own network namespace)
RPC_APT := DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=900
RPC_PKGS := runc busybox-static iptables
rpc-deps:
	@dpkg -s $(RPC_PKGS) >/dev/null 2>&1 || { \
		$(RPC_APT) install -y --no-install-recommends $(RPC_PKGS) >/dev/null 2>&1 || \
		{ $(RPC_APT) update >/dev/null && $(RPC_APT) install -y --no-install-recommends $(RPC_PKGS) >/dev/null; }; }
	@dpkg -s $(RPC_PKGS) >/dev/null 2>&1
