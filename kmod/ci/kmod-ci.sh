#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# kmod-ci.sh - build an out-of-tree kernel module against Debian's kernel headers and
# test it inside that Debian kernel booted in qemu (TCG; see KMOD_CI_ACCEL).
#
#   kmod-ci.sh install                       idempotent: apt packages + extracted kernel image
#   kmod-ci.sh build  [MODULE_DIR]           make -C /usr/src/linux-headers-$KVER M=MODULE_DIR
#   kmod-ci.sh run --ko X.ko [--ko Y.ko] --initrd-exec STATIC_BIN
#   kmod-ci.sh run --ko X.ko [--ko Y.ko] --hostfs-exec 'shell command run in $PWD in the guest'
#              [--disk MIB:PATH]             (hostfs) a fresh ext4 disk of MIB MiB mounted at PATH in the guest
#   kmod-ci.sh kver                          print the kernel ABI version used (e.g. 6.1.0-56-amd64)
#   kmod-ci.sh checkpatch FILE...            the kernel's scripts/checkpatch.pl (--strict) on FILEs;
#                                            fetched once from Debian's linux-source-<major> package
#
# run exits with the guest command's exit code; 124 = timeout, 125 = no result marker (guest
# crashed/panicked), 126 = test passed but the kernel log has a WARNING/BUG/Oops (KMOD_CI_STRICT=1).
# Env: KMOD_CI_CACHE (/var/cache/kmod-ci), KMOD_CI_OUT ($PWD/.kmod-ci), KMOD_CI_TIMEOUT (300),
#      KMOD_CI_MEM (1G), KMOD_CI_SMP (1), KMOD_CI_ACCEL (auto: kvm if /dev/kvm and vmx/svm
#      in /proc/cpuinfo, else tcg), KMOD_CI_CPU (-cpu model for tcg), KMOD_CI_STRICT (1), KMOD_CI_APPEND (extra kernel cmdline).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KMOD_CI_CACHE:-/var/cache/kmod-ci}
OUT=${KMOD_CI_OUT:-$PWD/.kmod-ci}
TIMEOUT=${KMOD_CI_TIMEOUT:-300}
PKGS=(qemu-system-x86 linux-headers-amd64 build-essential busybox-static cpio kmod python3 perl xz-utils)

log() { printf '[kmod-ci %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# Kernel ABI version = the one the linux-headers-amd64 metapackage points at (moves with
# Debian security updates, so never hard-code it).
kver() {
  dpkg-query -W -f='${Depends}' linux-headers-amd64 2>/dev/null |
    grep -o 'linux-headers-[0-9][^ ,]*-amd64' | head -1 | sed 's/^linux-headers-//'
}

apt_q() {  # apt-get with a wait on the dpkg lock (another job may be installing)
  DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=900 "$@"
}
apt_update() {
  local i
  # DPkg::Lock::Timeout does not cover the lists lock taken by "apt-get update": retry instead
  for i in 1 2 3 4 5 6 7 8 9 10; do apt_q update >/dev/null && return 0; log "apt-get update failed (try $i)"; sleep 15; done
  return 1
}

cmd_install() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt_update
    apt_q install -y --no-install-recommends "${missing[@]}" >/dev/null
  fi
  local v; v=$(kver); [ -n "$v" ] || die "cannot determine kernel version from linux-headers-amd64"
  local d="$CACHE/$v"
  mkdir -p "$CACHE"; exec 9>"$CACHE/.lock"; flock 9   # concurrent CI jobs share the cache
  if [ ! -e "$d/.done" ]; then
    # The image is only downloaded and unpacked, not installed: installing linux-image-* pulls
    # initramfs-tools + udev/systemd upgrades and runs update-initramfs (~30 s each time).
    log "fetching linux-image-$v into $d"
    rm -rf "$d"; mkdir -p "$d"
    local t; t=$(mktemp -d); chmod 777 "$t"  # _apt must be able to write here
    (cd "$t" && apt_q download "linux-image-$v" >/dev/null) ||
      { apt_update; (cd "$t" && apt_q download "linux-image-$v" >/dev/null); }
    dpkg-deb -x "$t"/linux-image-"$v"_*.deb "$d/root"
    rm -rf "$t"
    depmod -b "$d/root" "$v"
    # Uncompressed ELF vmlinux boots via qemu's PVH entry and skips the XZ decompressor,
    # which costs ~5.5 s under TCG. Fall back to the bzImage if extraction fails.
    python3 "$HERE/extract-vmlinux.py" "$d/root/boot/vmlinuz-$v" "$d/vmlinux" >/dev/null ||
      log "vmlinux extraction failed; will boot the bzImage"
    touch "$d/.done"
  fi
  exec 9>&-
  log "ready: kernel $v in $d"
}

cmd_build() {
  local dir=${1:-.} v; v=$(kver)
  [ -d "/usr/src/linux-headers-$v" ] || die "headers for $v missing; run: $0 install"
  make -C "/usr/src/linux-headers-$v" M="$(cd "$dir" && pwd)" modules
}

cmd_run() {
  local kos=() initrd_exec= hostfs_exec= disk=
  while (($#)); do
    case "$1" in
      --ko) kos+=("$2"); shift 2 ;;
      --initrd-exec) initrd_exec=$2; shift 2 ;;
      --hostfs-exec) hostfs_exec=$2; shift 2 ;;
      --disk) disk=$2; shift 2 ;;
      *) die "unknown run argument: $1" ;;
    esac
  done
  [ -n "$initrd_exec$hostfs_exec" ] || die "need --initrd-exec or --hostfs-exec"
  local v; v=$(kver); local d="$CACHE/$v"
  [ -e "$d/.done" ] || die "kernel $v not prepared; run: $0 install"
  local kernel="$d/vmlinux"; [ -s "$kernel" ] || kernel="$d/root/boot/vmlinuz-$v"
  mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
  case "$OUT" in *[[:space:]]*) die "KMOD_CI_OUT must not contain spaces" ;; esac

  # --- initramfs: busybox + init + project modules (+ 9p/overlay stack for hostfs) ---
  local r; r=$(mktemp -d)
  mkdir -p "$r"/{bin,ko,modules}
  cp /bin/busybox "$r/bin/busybox"
  cp "$HERE/guest-init.sh" "$r/init"; chmod 755 "$r/init"
  : >"$r/ko.order"; : >"$r/modules.order"
  local k m
  for k in "${kos[@]}"; do cp "$k" "$r/ko/"; basename "$k" >>"$r/ko.order"; done
  local append="console=ttyS0 panic=-1 oops=panic quiet mitigations=off i8042.noaux i8042.nokbd i8042.nopnp"
  local qargs=()
  if [ -n "$hostfs_exec" ]; then
    for m in virtio_pci 9pnet_virtio 9p overlay; do
      modprobe -d "$d/root" -S "$v" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
    done | awk '!seen[$0]++' | while read -r m; do
      cp "$m" "$r/modules/"; basename "$m" >>"$r/modules.order"
    done
    # the command runs as root in a chroot of the host fs, in the current directory
    # Put the real interpreter's directory first: a pyenv shim costs ~8 s per call under TCG.
    local path=$PATH pybin
    if pybin=$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null); then
      path="$pybin:$PATH"
    fi
    {
      echo "cd '$PWD' || exit 90"
      echo "export PATH='$path' HOME=/root LANG=C.UTF-8 TERM=dumb NO_COLOR=1 PYTHONDONTWRITEBYTECODE=1 KMOD_CI_OUT='$OUT'"
      [ -n "${VIRTUAL_ENV:-}" ] && echo "export VIRTUAL_ENV='$VIRTUAL_ENV'"
      echo "$hostfs_exec"
    } >"$OUT/guest-cmd.sh"
    append+=" kmodci.mode=hostfs kmodci.script=$OUT/guest-cmd.sh kmodci.outdir=$OUT"
    if [ -n "$disk" ]; then
      # a real block device (virtio-blk, ext4): page-cache behaviour as on a machine with a disk
      : >"$r/disk.order"
      for m in virtio_blk ext4; do
        modprobe -d "$d/root" -S "$v" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
      done | awk '!seen[$0]++' | while read -r m; do
        grep -qx "$(basename "$m")" "$r/modules.order" && continue   # already loaded for 9p
        cp "$m" "$r/modules/"; basename "$m" >>"$r/disk.order"
      done
      rm -f "$OUT/disk.img"; truncate -s "${disk%%:*}M" "$OUT/disk.img"
      mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$OUT/disk.img" >/dev/null
      append+=" kmodci.disk=${disk#*:}"
      qargs+=(-drive "file=$OUT/disk.img,if=virtio,format=raw,cache=writeback")
    fi
    qargs+=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
            -virtfs "local,path=$OUT,mount_tag=hostout,security_model=none")
  else
    cp "$initrd_exec" "$r/test"; chmod 755 "$r/test"
  fi
  (cd "$r" && find . | cpio -o -H newc --quiet) >"$OUT/initrd.cpio"
  rm -rf "$r"

  # --- boot ---
  # KVM only with real VT-x/AMD-V: on PVM hosts (/dev/kvm works, no vmx/svm in cpuinfo) a stock
  # kernel is run by KVM's instruction emulator: minutes to boot, then "emulation failure".
  local accel=${KMOD_CI_ACCEL:-auto}
  if [ "$accel" = auto ]; then
    accel=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then accel=kvm; fi
  fi
  if [ "$accel" = kvm ]; then qargs+=(-cpu host); elif [ -n "${KMOD_CI_CPU:-}" ]; then qargs+=(-cpu "$KMOD_CI_CPU"); fi
  rm -f "$OUT/console.log" "$OUT/guest-output.log"
  log "booting $v ($accel), timeout ${TIMEOUT}s"
  local t0=$SECONDS rc=0
  timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -accel "$accel" -m "${KMOD_CI_MEM:-1G}" -smp "${KMOD_CI_SMP:-1}" \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial "file:$OUT/console.log" -serial stdio \
    -kernel "$kernel" -initrd "$OUT/initrd.cpio" -append "$append ${KMOD_CI_APPEND:-}" "${qargs[@]}" \
    </dev/null | tee "$OUT/guest-output.log" || rc=$?
  log "qemu exited rc=$rc after $((SECONDS - t0))s"
  rm -f "$OUT/disk.img"

  # --- result ---
  local res
  res=$(tr -d '\r' <"$OUT/guest-output.log" | sed -n 's/^KMOD-CI-RESULT: rc=\([0-9]*\)$/\1/p' | tail -1)
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    res=124; log "TIMEOUT"
  elif [ -z "$res" ]; then
    res=125; log "no result marker (guest crashed?)"
  fi
  if [ "$res" = 0 ] && [ "${KMOD_CI_STRICT:-1}" = 1 ] &&
     grep -Eq 'WARNING:|BUG:|Oops|Call Trace:|general protection|KASAN|UBSAN' "$OUT/console.log"; then
    res=126; log "kernel log has a warning/oops"
  fi
  if [ "$res" != 0 ]; then
    log "---- kernel console (last 60 lines of $OUT/console.log) ----"
    tail -n 60 "$OUT/console.log" | tr -d '\r' >&2
  fi
  log "result rc=$res"
  return "$res"
}

# checkpatch.pl is not in the headers package: take it (with spelling.txt and
# const_structs.checkpatch) from Debian's linux-source-<major> package, cached per version.
cmd_checkpatch() {
  local v major d t
  v=$(kver); major=$(echo "$v" | cut -d. -f1,2)
  d="$CACHE/checkpatch-$major"
  mkdir -p "$CACHE"; exec 9>"$CACHE/.lock"; flock 9
  if [ ! -e "$d/.done" ]; then
    log "fetching checkpatch.pl from linux-source-$major"
    rm -rf "$d"; mkdir -p "$d"
    t=$(mktemp -d); chmod 777 "$t"
    (cd "$t" && apt_q download "linux-source-$major" >/dev/null) ||
      { apt_update; (cd "$t" && apt_q download "linux-source-$major" >/dev/null); }
    dpkg-deb --fsys-tarfile "$t"/linux-source-"$major"_*.deb |
      tar -xO --wildcards '*/linux-source-*.tar.xz' |
      tar -xJ -C "$d" --strip-components=2 --wildcards '*/scripts/checkpatch.pl' \
        '*/scripts/spelling.txt' '*/scripts/const_structs.checkpatch'
    rm -rf "$t"
    touch "$d/.done"
  fi
  exec 9>&-
  # BIT()/BIT_ULL() do not exist for uapi headers: that CHECK does not apply there
  perl "$d/checkpatch.pl" --no-tree --strict --terse --show-types --ignore BIT_MACRO -f "$@"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  checkpatch) shift; cmd_checkpatch "$@" ;;
  build) shift; cmd_build "$@" ;;
  run) shift; cmd_run "$@" ;;
  kver) kver ;;
  *) sed -n '2,22p' "$0"; exit 2 ;;
esac
