#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# install-criu.sh: install real CRIU 4.2.x (the reference the compat tests run against) on Debian 12.
#
# Debian 12's own criu 3.17.1 fails on kernels >= 6.13 (vDSO probe), and criu 4.1.1 (trixie) cannot
# dump tasks holding inet sockets on kernels >= 6.16. So we take Debian's own criu 4.2.x .debs from a
# newer suite (forky, then sid), together with their whole library closure (libc6 included), unpack
# them into a private prefix and run criu under that suite's own ld.so. No build, no system package
# changes: private apt lists/cache, no dpkg database, no apt lock.
#
#   compat-tests/install-criu.sh [--force]
#
# Result: $CRIU4_BINDIR/criu (criu 4.2.x), $CRIU4_BINDIR/crit (the matching crit), pycriu in
# $CRIU4_PREFIX/usr/lib/python3/dist-packages. Idempotent (~0.01 s when installed); concurrent
# runs are serialised with flock. Needs: apt-get, apt-cache, dpkg-deb, flock, python3 (for crit),
# the Debian archive keyring, and network access to deb.debian.org on the first run.
#
# Env knobs:
#   CRIU4_SUITES       suites to try in order            (default "forky sid")
#   CRIU4_MIN_VERSION  lowest acceptable criu version    (default 4.2)
#   CRIU4_MIRROR       Debian mirror                     (default http://deb.debian.org/debian)
#   CRIU4_CACHE        private apt lists + .deb cache    (default /var/cache/criu4)
#   CRIU4_PREFIX       unpack dir                        (default /opt/criu4)
#   CRIU4_BINDIR       where the criu/crit wrappers go   (default /usr/local/sbin)
#   CRIU4_KDAT=0       do not prime /run/criu.kdat       (default 1: saves ~35 ms per criu call)
#
# kdat priming: criu caches its kernel-feature probe in /run/criu.kdat only when /run is a tmpfs
# (here it is not), so every call re-probes (~35 ms). We probe once in a private mount namespace with
# a tmpfs /run and copy the file out. criu never checks which kernel wrote that file, so we record the
# boot id next to it and prime again whenever it changes (another boot, or a qemu guest that sees the
# host's /run through an overlay); a stale file we cannot replace is deleted.
set -uo pipefail

CACHE=${CRIU4_CACHE:-/var/cache/criu4}
PREFIX=${CRIU4_PREFIX:-/opt/criu4}
BINDIR=${CRIU4_BINDIR:-/usr/local/sbin}
SUITES=${CRIU4_SUITES:-forky sid}
MIN_VERSION=${CRIU4_MIN_VERSION:-4.2}
MIRROR=${CRIU4_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
KDAT=/run/criu.kdat
KDAT_BOOT=/run/criu.kdat.boot_id

log() { echo "install-criu: $*" >&2; }

# version_ok CRIU: criu runs and reports a version >= MIN_VERSION
version_ok() {
    local v
    v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9.]*\).*/\1/p' | head -1)
    [ -n "$v" ] || return 1
    [ "$(printf '%s\n%s\n' "$MIN_VERSION" "$v" | sort -V | head -1)" = "$MIN_VERSION" ]
}

installed() {
    [ -f "$PREFIX/.criu4-ok" ] && [ -x "$BINDIR/crit" ] && version_ok "$BINDIR/criu"
}

boot_id() { cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown; }

kdat_fresh() {
    [ -s "$KDAT" ] && [ -f "$KDAT_BOOT" ] && [ "$(cat "$KDAT_BOOT" 2>/dev/null)" = "$(boot_id)" ]
}

prime_kdat() {
    [ "${CRIU4_KDAT:-1}" = 1 ] || return 0
    # on a tmpfs /run criu keeps (and after a reboot loses) the cache itself
    [ "$(stat -f -c %T /run 2>/dev/null)" = tmpfs ] && return 0
    kdat_fresh && return 0
    local ok=0
    if command -v unshare >/dev/null; then
        # shellcheck disable=SC2016
        unshare -m --propagation private sh -c \
            'mount -t tmpfs tmpfs /run && "$1" check >/dev/null 2>&1 && cat /run/criu.kdat' \
            sh "$BINDIR/criu" > "$KDAT.new" 2>/dev/null && [ -s "$KDAT.new" ] && ok=1
    fi
    if [ $ok = 1 ] && chmod 600 "$KDAT.new" && mv -f "$KDAT.new" "$KDAT"; then
        boot_id > "$KDAT_BOOT"
    else
        # a cache written under another kernel is worse than none: criu would trust it
        rm -f "$KDAT.new" "$KDAT" "$KDAT_BOOT"
        log "could not prime $KDAT (criu will probe the kernel on every call)"
    fi
    rm -f "$KDAT.tmp"    # empty leftover of criu's own attempt on a non-tmpfs /run
    return 0
}

install_suite() {
    local suite=$1
    local apt="$CACHE/apt-$suite" debs="$CACHE/debs-$suite" i
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$debs" || return 1
    echo "deb [signed-by=$KEYRING] $MIRROR $suite main" > "$apt/sources.list"
    local A=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::State::status=/dev/null
             -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o APT::Sandbox::User=root
             -o Acquire::Retries=3 -o Acquire::http::Timeout=30)
    for i in 1 2 3; do
        apt-get "${A[@]}" -qq update && break
        [ "$i" = 3 ] && return 1
        sleep 5
    done
    # criu's full runtime closure in that suite (an empty status file means "nothing installed",
    # so libc6 and friends are included), plus crit/pycriu and the pure-Python protobuf
    local pkgs
    pkgs=$(apt-cache "${A[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
             --no-breaks --no-replaces --no-enhances criu 2>/dev/null | grep -v '^[ <]' | sort -u)
    [ -n "$pkgs" ] || { log "no criu in $suite"; return 1; }
    # exact file names for this index state; download only what is not cached (apt verifies hashes)
    local uris files=() need=() f
    # shellcheck disable=SC2086
    uris=$(apt-get "${A[@]}" --print-uris download $pkgs python3-pycriu python3-protobuf) || return 1
    while read -r _ f _; do
        [ -n "$f" ] || continue
        files+=("$f")
        [ -s "$debs/$f" ] || need+=("${f%%_*}")
    done <<< "$uris"
    if [ ${#need[@]} -gt 0 ]; then
        for i in 1 2 3; do
            (cd "$debs" && apt-get "${A[@]}" -qq download "${need[@]}" 2>&1 \
                | grep -v '^W: Download is performed unsandboxed'; exit "${PIPESTATUS[0]}") && break
            [ "$i" = 3 ] && return 1
            sleep 5
        done
    fi
    rm -rf "$PREFIX.new" && mkdir -p "$PREFIX.new" || return 1
    for f in "${files[@]}"; do dpkg-deb -x "$debs/$f" "$PREFIX.new" || return 1; done
    [ -x "$PREFIX.new/usr/sbin/criu" ] && [ -e "$PREFIX.new/usr/lib64/ld-linux-x86-64.so.2" ] \
        || { log "$suite: unpacked tree has no criu or no ld.so"; return 1; }
    rm -rf "$PREFIX" && mv "$PREFIX.new" "$PREFIX" || return 1
    # criu under the suite's own loader and libraries. Nothing is exported, so the tools criu
    # executes (ip, nft, tar, action scripts) keep the host's libc. comm shows "ld-linux-x86-64".
    cat > "$BINDIR/criu.new" <<EOF
#!/bin/sh
exec $PREFIX/usr/lib64/ld-linux-x86-64.so.2 --library-path $PREFIX/usr/lib/x86_64-linux-gnu $PREFIX/usr/sbin/criu "\$@"
EOF
    # crit of the same version; the suite's protobuf runs as pure Python on any python3
    cat > "$BINDIR/crit.new" <<EOF
#!/bin/sh
PYTHONPATH=$PREFIX/usr/lib/python3/dist-packages\${PYTHONPATH:+:\$PYTHONPATH} PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python exec \${CRIT_PYTHON:-python3} -m crit "\$@"
EOF
    chmod 755 "$BINDIR/criu.new" "$BINDIR/crit.new" && mv -f "$BINDIR/criu.new" "$BINDIR/criu" \
        && mv -f "$BINDIR/crit.new" "$BINDIR/crit" || return 1
    if ! version_ok "$BINDIR/criu"; then
        log "$suite: $("$BINDIR/criu" --version 2>&1 | head -1) is older than $MIN_VERSION"
        return 1
    fi
    if ! "$BINDIR/criu" check >/dev/null 2>&1; then
        log "$suite: criu check failed:"; "$BINDIR/criu" check >&2; return 1
    fi
    echo "$suite $(date -u +%FT%TZ) ${files[*]}" > "$PREFIX/.criu4-ok"
}

main() {
    local force=0
    case "${1:-}" in
        --force) force=1 ;;
        "") ;;
        *) sed -n '4,20p' "$0" >&2; exit 2 ;;
    esac
    if [ $force = 0 ] && installed; then
        prime_kdat
        return 0
    fi
    local tool
    for tool in apt-get apt-cache dpkg-deb flock; do
        command -v "$tool" >/dev/null || { log "need $tool"; return 1; }
    done
    [ -r "$KEYRING" ] || { log "need $KEYRING (package debian-archive-keyring)"; return 1; }
    command -v python3 >/dev/null || log "warning: no python3, crit will not run"
    mkdir -p "$CACHE" "$BINDIR" "$(dirname "$PREFIX")" || return 1
    (
        flock -w 900 9 || { log "lock timeout on $CACHE/.lock"; exit 1; }
        # another run may have finished the job while we waited for the lock
        [ $force = 0 ] && installed && exit 0
        for suite in $SUITES; do
            install_suite "$suite" && exit 0
            log "suite $suite failed, trying the next one"
        done
        exit 1
    ) 9>"$CACHE/.lock" || { log "could not install criu >= $MIN_VERSION from: $SUITES"; return 1; }
    rm -f "$KDAT_BOOT"
    prime_kdat
    log "$("$BINDIR/criu" --version | head -1) at $BINDIR/criu, crit at $BINDIR/crit (prefix $PREFIX)"
}

main "$@"
