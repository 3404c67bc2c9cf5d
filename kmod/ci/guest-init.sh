#!/bin/busybox sh
# SPDX-License-Identifier: MIT
# /init of the kmod-ci test initramfs (busybox-static). Knobs on the kernel cmdline:
#   kmodci.mode=initrd  run /test from the initramfs (default)
#   kmodci.mode=hostfs  mount host / (virtio-9p tag hostroot, read-only) under a tmpfs overlay,
#                       chroot into it and run the host script kmodci.script=<path>;
#                       host dir kmodci.outdir=<path> (tag hostout) is mounted read-write at the same path.
#   kmodci.disk=<path>  (hostfs) the ext4 disk /dev/vda is mounted at <path> inside the chroot: a real
#                       block device, so that dropping the page cache makes reads go to "disk".
# Test stdout/stderr go to ttyS1; the last line is "KMOD-CI-RESULT: rc=<n>" (also on ttyS0).
/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /mnt /lower /rw
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mode=initrd script= outdir= disk=
for a in $(cat /proc/cmdline); do
  case "$a" in
    kmodci.mode=*) mode=${a#*=} ;;
    kmodci.script=*) script=${a#*=} ;;
    kmodci.outdir=*) outdir=${a#*=} ;;
    kmodci.disk=*) disk=${a#*=} ;;
  esac
done
out=/dev/ttyS1
stty -F "$out" -opost -echo 2>/dev/null  # no \r\n translation in the captured output
finish() {
  # full kernel log (all levels; "quiet" hides KERN_WARNING splats on the live console)
  { echo "==== dmesg ===="; dmesg; echo "==== end dmesg ===="; } >/dev/ttyS0
  echo "KMOD-CI-RESULT: rc=$1" >"$out"; echo "KMOD-CI-RESULT: rc=$1" >/dev/ttyS0
  sync; poweroff -f; sleep 10
}
for m in $(cat /modules.order); do   # dependencies of the 9p/overlay stack, in order
  insmod /modules/$m || { echo "kmod-ci: insmod $m failed" >"$out"; finish 102; }
done
for k in $(cat /ko.order); do        # the project's modules, in the order given to kmod-ci.sh
  insmod /ko/$k || { echo "kmod-ci: insmod $k failed" >"$out"; finish 101; }
done
if [ "$mode" = hostfs ]; then
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || finish 103
  mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir -p /rw/upper /rw/work
  mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /mnt || finish 104
  mount -t proc proc /mnt/proc; mount -t sysfs sysfs /mnt/sys; mount -t devtmpfs devtmpfs /mnt/dev
  mkdir -p /mnt/dev/shm /mnt/dev/pts; mount -t tmpfs tmpfs /mnt/dev/shm; mount -t devpts devpts /mnt/dev/pts
  if [ -n "$outdir" ]; then
    mkdir -p "/mnt$outdir" && mount -t 9p -o trans=virtio,version=9p2000.L,cache=none hostout "/mnt$outdir" || finish 105
  fi
  if [ -n "$disk" ]; then
    for m in $(cat /disk.order); do insmod /modules/$m 2>/dev/null; done  # crc32c-intel needs SSE4.2
    i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    mkdir -p "/mnt$disk" && mount -t ext4 /dev/vda "/mnt$disk" || { echo "kmod-ci: no disk" >"$out"; finish 106; }
  fi
  chroot /mnt /bin/sh "$script" >"$out" 2>&1 </dev/null
  rc=$?
  [ -n "$outdir" ] && { sync; umount "/mnt$outdir"; }
  [ -n "$disk" ] && umount "/mnt$disk"
  finish $rc
else
  /test >"$out" 2>&1 </dev/null
  finish $?
fi
