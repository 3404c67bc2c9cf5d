# SPDX-License-Identifier: MIT
# The compat-test bed: real CRIU 4.2.x (compat-tests/install-criu.sh; idempotent, ~0.01 s when
# installed; knobs CRIU4_PREFIX, CRIU4_BINDIR, CRIU4_CACHE, CRIU4_SUITES), gcc for the C workloads, and
# the everyday programs test_real_programs.py checkpoints (tmux; `script` is util-linux's, in bsdutils).
.PHONY: criu compat-setup

COMPAT_APT := DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=900

criu:
	@bash compat-tests/install-criu.sh

compat-setup: criu
	@if ! command -v gcc >/dev/null || ! test -e /usr/include/stdio.h; then \
	  $(COMPAT_APT) install -y --no-install-recommends gcc libc6-dev \
	  || { $(COMPAT_APT) update && $(COMPAT_APT) install -y --no-install-recommends gcc libc6-dev; }; \
	fi
	@if ! command -v tmux >/dev/null || ! command -v script >/dev/null; then \
	  $(COMPAT_APT) install -y --no-install-recommends tmux bsdutils \
	  || { $(COMPAT_APT) update && $(COMPAT_APT) install -y --no-install-recommends tmux bsdutils; }; \
	fi
