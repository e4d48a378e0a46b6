#!/usr/bin/env bash
# Checks the edge BR2_EXTERNAL tree against a Buildroot checkout without
# downloading or building anything: every defconfig of the tree must load
# with no Kconfig warning, and every option it sets must survive into the
# resulting .config. The second test is the one that matters: Buildroot's
# Kconfig drops an unknown symbol, or one whose dependencies are not met,
# without a word, and the build would then make a different image than the
# one written down. It also asks Buildroot how it resolved the edge package.
#
#   BUILDROOT_DIR=/path/to/buildroot buildroot/check.sh [DEFCONFIG...]
#
# DEFCONFIG defaults to every file in buildroot/configs/. Output trees go to
# a temporary directory (CHECK_OUTPUT_DIR to keep them). Exits non-zero on
# the first defconfig that fails, after printing what it checked.
#
# The defconfigs pin kernel and U-Boot versions and force hash checking, so
# the checkout must also carry a hash for each of those downloads; that is
# checked too, since a Buildroot upgrade that drops one only fails later,
# in the middle of a build.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly EXTERNAL=$HERE
readonly BUILDROOT_DIR=${BUILDROOT_DIR:?set BUILDROOT_DIR to a Buildroot checkout}

main() {
    [[ -f $BUILDROOT_DIR/Makefile && -d $BUILDROOT_DIR/package ]] ||
        die "$BUILDROOT_DIR is not a Buildroot checkout"

    if [[ -n ${CHECK_OUTPUT_DIR:-} ]]; then
        OUT_ROOT=$CHECK_OUTPUT_DIR
        mkdir -p "$OUT_ROOT"
    else
        OUT_ROOT=$(mktemp -d)
        trap 'rm -rf "$OUT_ROOT"' EXIT
    fi

    local -a defconfigs=("$@")
    if [[ ${#defconfigs[@]} -eq 0 ]]; then
        local file
        for file in "$EXTERNAL"/configs/*_defconfig; do
            defconfigs+=("$(basename "$file")")
        done
    fi

    say "Buildroot $(buildroot_version) at $BUILDROOT_DIR"
    local defconfig
    for defconfig in "${defconfigs[@]}"; do
        check_defconfig "$defconfig" "$OUT_ROOT/${defconfig%_defconfig}"
    done
    say "all ${#defconfigs[@]} defconfig(s) passed"
}

say() {
    printf 'check: %s\n' "$*"
}

die() {
    printf 'check: FAILED: %s\n' "$*" >&2
    exit 1
}

buildroot_version() {
    sed -n 's/^export BR2_VERSION := //p' "$BUILDROOT_DIR/Makefile"
}

check_defconfig() {
    local defconfig=$1 out=$2
    local file=$EXTERNAL/configs/$defconfig
    [[ -f $file ]] || die "no $file"

    say "$defconfig: make ${defconfig}"
    local log=$out.log
    mkdir -p "$out"
    if ! make -C "$BUILDROOT_DIR" O="$out" BR2_EXTERNAL="$EXTERNAL" "$defconfig" >"$log" 2>&1; then
        cat "$log" >&2
        die "$defconfig: make ${defconfig} failed"
    fi
    if grep -qi 'warning' "$log"; then
        grep -i 'warning' "$log" >&2
        die "$defconfig: Kconfig warnings"
    fi
    say "$defconfig: loaded without warnings"

    check_options_survived "$defconfig" "$file" "$out/.config"
    check_edge_package "$defconfig" "$out"
    check_pinned_hashes "$defconfig" "$out"
}

# Each `SYMBOL=value` line must appear verbatim in .config, and each
# `# SYMBOL is not set` line must not have turned into a value.
check_options_survived() {
    local defconfig=$1 file=$2 config=$3
    local line symbol checked=0 failed=0
    while IFS= read -r line; do
        case $line in
        BR2_*=*)
            symbol=${line%%=*}
            if ! grep -qxF -- "$line" "$config"; then
                printf 'check:   %s: want %s, got %s\n' "$defconfig" "$line" \
                    "$(grep -E "^(# )?${symbol}[= ]" "$config" || echo 'nothing')" >&2
                failed=$((failed + 1))
            fi
            checked=$((checked + 1))
            ;;
        "# BR2_"*" is not set")
            symbol=${line#\# }
            symbol=${symbol%% *}
            if grep -q "^$symbol=" "$config"; then
                printf 'check:   %s: want %s unset, got %s\n' "$defconfig" "$symbol" \
                    "$(grep "^$symbol=" "$config")" >&2
                failed=$((failed + 1))
            fi
            checked=$((checked + 1))
            ;;
        esac
    done <"$file"
    [[ $failed -eq 0 ]] || die "$defconfig: $failed of $checked options did not survive"
    say "$defconfig: all $checked options kept in .config"
}

# The edge package must resolve to the Rust target of the musl toolchain,
# vendor through the appliance manifest, and find its hash file; asking
# Buildroot for the variables parses the package's .mk without building.
check_edge_package() {
    local defconfig=$1 out=$2 vars
    vars=$(make -s -C "$BUILDROOT_DIR" O="$out" printvars \
        VARS='RUSTC_TARGET_NAME EDGE_SOURCE EDGE_SUBDIR EDGE_DOWNLOAD_POST_PROCESS EDGE_HASH_FILES' \
        2>/dev/null) || die "$defconfig: make printvars failed"
    expect_var "$defconfig" "$vars" RUSTC_TARGET_NAME 'aarch64-unknown-linux-musl'
    expect_var "$defconfig" "$vars" EDGE_SUBDIR 'appliance'
    expect_var "$defconfig" "$vars" EDGE_DOWNLOAD_POST_PROCESS 'cargo'
    expect_var "$defconfig" "$vars" EDGE_SOURCE 'edge-*.tar.gz'
    expect_var "$defconfig" "$vars" EDGE_HASH_FILES "*$EXTERNAL/package/edge/edge.hash*"
    say "$defconfig: edge package resolves ($(var_value "$vars" EDGE_SOURCE), target $(var_value "$vars" RUSTC_TARGET_NAME))"
}

# Every pinned download must be listed in one of the hash files Buildroot
# consults for it (the package's own and those under BR2_GLOBAL_PATCH_DIR).
check_pinned_hashes() {
    local defconfig=$1 out=$2 pkg vars source files found file
    for pkg in LINUX LINUX_HEADERS UBOOT; do
        vars=$(make -s -C "$BUILDROOT_DIR" O="$out" printvars \
            VARS="${pkg}_SOURCE ${pkg}_HASH_FILES" 2>/dev/null) ||
            die "$defconfig: make printvars failed"
        source=$(var_value "$vars" "${pkg}_SOURCE")
        files=$(var_value "$vars" "${pkg}_HASH_FILES")
        [[ -n $source ]] || die "$defconfig: ${pkg}_SOURCE is empty"
        found=""
        for file in $files; do
            [[ $file == /* ]] || file=$BUILDROOT_DIR/$file
            if [[ -f $file ]] && awk -v f="$source" '$1 !~ /^#/ && $3 == f { hit = 1 } END { exit !hit }' "$file"; then
                found=$file
                break
            fi
        done
        [[ -n $found ]] || die "$defconfig: no hash for $source in: $files"
        say "$defconfig: hash for $source in ${found#"$BUILDROOT_DIR"/}"
    done
}

var_value() {
    sed -n "s/^$2=//p" <<<"$1"
}

# expect_var DEFCONFIG VARS NAME PATTERN: PATTERN is a shell glob.
expect_var() {
    local value
    value=$(var_value "$2" "$3")
    # shellcheck disable=SC2053 # the right-hand side is a glob on purpose
    [[ $value == $4 ]] || die "$1: $3 is '$value', expected '$4'"
}

main "$@"
