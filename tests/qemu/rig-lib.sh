# Shared by the rig's shell scripts (sourced, not run): where things are and
# how busybox is installed into a tree.
# shellcheck shell=bash
# The readonly paths are used by the scripts that source this file.
# shellcheck disable=SC2034

RIG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly RIG_ROOT
readonly RIG_HERE="$RIG_ROOT/tests/qemu"
readonly RIG_CACHE="$RIG_ROOT/.rig/cache"

die() {
    echo "${0##*/}: $*" >&2
    exit 1
}

require_rig_cache() {
    [[ -f $RIG_CACHE/ready ]] || die "no rig cache in $RIG_CACHE: run ./dev deps"
}

# install_busybox TREE: the arm64 busybox with a link for every applet. The
# applet list comes from that busybox itself (run through qemu-user), so the
# links match exactly the binary that ships.
install_busybox() {
    local tree=$1
    mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin}
    install -m 755 "$RIG_CACHE/busybox" "$tree/bin/busybox"
    local applet
    while read -r applet; do
        [[ $applet == bin/busybox ]] && continue
        local depth=${applet//[^\/]/}
        local up=${depth//\//../}
        ln -sf "${up}bin/busybox" "$tree/$applet"
    done < <(qemu-aarch64-static "$RIG_CACHE/busybox" --list-full)
}
