# SPDX-License-Identifier: MIT
# Real CRIU 4.2.x, the reference the compat tests run against (compat-tests/install-criu.sh).
# Idempotent: ~0.01 s when installed. Knobs: CRIU4_PREFIX, CRIU4_BINDIR, CRIU4_CACHE, CRIU4_SUITES.
.PHONY: criu

criu:
	@bash compat-tests/install-criu.sh
