# SPDX-License-Identifier: MIT
# The kernel module (kmod/): built against Debian bookworm's linux-headers-amd64 (6.1) and
# tested inside Debian's 6.1 kernel booted in qemu (TCG) by kmod/ci/kmod-ci.sh, which installs
# its own apt packages on a fresh Debian 12 machine.
#   make kmod            build kmod/spice.ko (installs the prerequisites when missing)
#   make kmod-test       checkpatch + in-guest C tests (restore, errors, fuzz) on two guests
#                        (qemu64, 1 vCPU: FXSAVE path; max, 2 vCPUs: XSAVE/AVX/PKRU, migrations)
#                        + in-guest Python test + the kmod backend's compat tests (kmod-test-compat)
#   make kmod-test-compat compat-tests/test_kmod_*.py in a guest: real CRIU dumps restored by --backend kmod
#   make bench-kmod      CRIU vs spice ptrace vs spice kmod in a guest (BENCH_N restores each, cold cache)
#   make kmod-checkpatch the kernel's checkpatch.pl --strict on the module sources
KMOD_CI := kmod/ci/kmod-ci.sh
KMOD_OUT ?= $(CURDIR)/.kmod-ci
KMOD_TEST_BIN := $(KMOD_OUT)/spice_kmod_test
KMOD_TEST_SRC := $(wildcard kmod/tests/*.c) $(wildcard kmod/tests/*.h) kmod/include/uapi/spice.h
KMOD_SRC := $(wildcard kmod/spice_*.c) $(wildcard kmod/spice_*.h) kmod/include/uapi/spice.h
KMOD_VMS ?= qemu64:1 max:2
KMOD_TIMEOUT ?= 300

.PHONY: kmod kmod-deps kmod-test kmod-test-c kmod-test-py kmod-checkpatch kmod-clean

kmod-deps:
	bash $(KMOD_CI) install

kmod: kmod-deps
	bash $(KMOD_CI) build kmod

$(KMOD_TEST_BIN): $(KMOD_TEST_SRC)
	mkdir -p $(KMOD_OUT)
	gcc -O2 -static -Wall -Wextra -Wno-unused-parameter -fno-stack-protector \
		-o $@ $(filter %.c,$^) -lpthread

kmod-checkpatch: kmod-deps
	bash $(KMOD_CI) checkpatch $(KMOD_SRC)

kmod-test-c: kmod $(KMOD_TEST_BIN)
	@for vm in $(KMOD_VMS); do \
		cpu=$${vm%%:*}; smp=$${vm##*:}; \
		echo "== kmod in-guest C tests, cpu $$cpu, $$smp vCPU"; \
		KMOD_CI_OUT=$(KMOD_OUT) KMOD_CI_CPU=$$cpu KMOD_CI_SMP=$$smp KMOD_CI_TIMEOUT=$(KMOD_TIMEOUT) \
			bash $(KMOD_CI) run --ko kmod/spice.ko --initrd-exec $(KMOD_TEST_BIN) || exit $$?; \
	done

kmod-test-py: kmod
	@echo "== kmod in-guest Python test"
	KMOD_CI_OUT=$(KMOD_OUT) KMOD_CI_TIMEOUT=$(KMOD_TIMEOUT) bash $(KMOD_CI) run --ko kmod/spice.ko \
		--hostfs-exec 'python3 kmod/tests/test_spice_device.py'

kmod-test: kmod-checkpatch kmod-test-c kmod-test-py kmod-test-compat

kmod-clean:
	$(MAKE) -C kmod clean
	rm -f $(KMOD_TEST_BIN)

# The kmod backend against real CRIU 4.2.1 dumps made in the guest (compat-tests/test_kmod_*.py):
# one guest with XSAVE (-cpu max), 2 vCPUs, 2 GiB, the host's venv and criu through the overlay.
# Bytecode is compiled on the host first: the guest cannot write it (PYTHONDONTWRITEBYTECODE).
KMOD_COMPAT_TESTS ?= $(wildcard compat-tests/test_kmod_*.py)
KMOD_COMPAT_TIMEOUT ?= 1800
KMOD_GUEST_ENV := SPICE_KMOD_GUEST=1 SPICE_COMPAT_TIMEOUT_SCALE=4 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
KMOD_GUEST_VM := KMOD_CI_OUT=$(KMOD_OUT) KMOD_CI_CPU=max KMOD_CI_SMP=2 KMOD_CI_MEM=2G

.PHONY: kmod-test-compat bench-kmod

kmod-test-compat: setup compat-setup kmod
	@echo "== kmod backend tests in the guest: $(KMOD_COMPAT_TESTS)"
	$(VPY) -m compileall -q spice_criu compat-tests
	$(KMOD_GUEST_VM) KMOD_CI_TIMEOUT=$(KMOD_COMPAT_TIMEOUT) bash $(KMOD_CI) run --ko kmod/spice.ko \
		--hostfs-exec '$(KMOD_GUEST_ENV) $(VPY) -m pytest -q -p no:cacheprovider $(KMOD_COMPAT_TESTS)'

# `make bench-kmod`: CRIU vs spice ptrace vs spice kmod in the guest, images on a fresh ext4 disk
# (virtio-blk) so that drop_caches makes restores read from the disk. BENCH_N restores per tool.
BENCH_N ?= 10
KMOD_BENCH_TIMEOUT ?= 5400
KMOD_BENCH_ARGS ?=
KMOD_BENCH_DISK := /var/tmp/spice-bench

bench-kmod: setup compat-setup kmod
	$(VPY) -m compileall -q spice_criu compat-tests
	$(KMOD_GUEST_VM) KMOD_CI_TIMEOUT=$(KMOD_BENCH_TIMEOUT) bash $(KMOD_CI) run --ko kmod/spice.ko \
		--disk 4096:$(KMOD_BENCH_DISK) --hostfs-exec 'SPICE_COMPAT_TMP=$(KMOD_BENCH_DISK) \
		SPICE_COMPAT_TIMEOUT_SCALE=4 BENCH_N=$(BENCH_N) $(VPY) compat-tests/bench_kmod.py $(KMOD_BENCH_ARGS)'
