#!/usr/bin/env bash
# Install what the KMS needs from Debian's packages, but only what is missing.
#
#   softhsm-setup/install.sh [--postgres] [--print-module] [--quiet]
#
#   (always)        SoftHSM2 (softhsm2-util and the PKCS#11 module libsofthsm2.so),
#                   and tmux (the ceremony runner's interactive test)
#   --browser       also Debian's chromium (the audit report's browser test)
#   --postgres      also PostgreSQL's server binaries (/usr/lib/postgresql/*/bin);
#                   the system service is NOT started: the tests start their own
#                   server on loopback
#   --print-module  print the SoftHSM2 module's path on stdout (nothing else is
#                   ever printed on stdout: apt's chatter goes to stderr)
#   --quiet         no progress messages
#
# Runs `apt-get update` at most once, and only when something has to be
# installed. As non-root it uses sudo when available, else it fails with a
# message saying what to install by hand. Set SOFTHSM2_MODULE to use a module
# at a non-standard path (e.g. a SoftHSM2 built from source).
set -euo pipefail

want_postgres=0
want_browser=0
print_module=0
quiet=0

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
say() { if [[ $quiet == 0 ]]; then printf 'install.sh: %s\n' "$*" >&2; fi; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

while (($#)); do
    case $1 in
        --postgres) want_postgres=1 ;;
        --browser) want_browser=1 ;;
        --print-module) print_module=1 ;;
        -q | --quiet) quiet=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

# Print the path of SoftHSM2's PKCS#11 module, or fail.
find_softhsm_module() {
    local c listing
    if [[ -n ${SOFTHSM2_MODULE:-} ]]; then
        [[ -f $SOFTHSM2_MODULE ]] || die "SOFTHSM2_MODULE=$SOFTHSM2_MODULE does not exist"
        printf '%s\n' "$SOFTHSM2_MODULE"
        return 0
    fi
    for c in /usr/lib/softhsm/libsofthsm2.so \
        /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
        /usr/lib/*-linux-gnu*/softhsm/libsofthsm2.so \
        /usr/local/lib/softhsm/libsofthsm2.so; do
        if [[ -f $c ]]; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    # Last resort: ask dpkg where the package put it (libsofthsm2 ships the
    # module; softhsm2 depends on it).
    listing=$(dpkg -L libsofthsm2 softhsm2 2>/dev/null || true)
    c=$(grep '/libsofthsm2\.so$' <<<"$listing" | head -n 1 || true)
    if [[ -n $c && -f $c ]]; then
        printf '%s\n' "$c"
        return 0
    fi
    return 1
}

have_softhsm() { command -v softhsm2-util >/dev/null 2>&1 && find_softhsm_module >/dev/null; }
have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }

pkgs=()
have_softhsm || pkgs+=(softhsm2 libsofthsm2)
# The ceremony runner's interactive test drives a pseudo-terminal with tmux.
command -v tmux >/dev/null 2>&1 || pkgs+=(tmux)
if [[ $want_postgres == 1 ]] && ! have_postgres; then
    # The metapackage follows Debian's supported major version (15 on bookworm).
    pkgs+=(postgresql)
fi
# Headless Chromium renders the audit report in a test.
if [[ $want_browser == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
    pkgs+=(chromium)
fi

if ((${#pkgs[@]})); then
    as_root=()
    if [[ $(id -u) != 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            as_root=(sudo)
        else
            die "need to install ${pkgs[*]} from Debian's packages but am not root and sudo is not available; run as root: apt-get update && apt-get install -y ${pkgs[*]}"
        fi
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found: install ${pkgs[*]} with your system's package manager (set SOFTHSM2_MODULE if the module is in an unusual place)"

    # Never let a package's maintainer scripts start a system service (the
    # PostgreSQL package would start its 'main' cluster otherwise). Docker
    # images ship such a policy-rc.d already; add one only for the install.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    cleanup() {
        if [[ $added_policy == 1 ]]; then "${as_root[@]}" rm -f "$policy"; fi
    }
    trap cleanup EXIT
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, added by kms softhsm-setup/install.sh\nexit 101\n' |
            "${as_root[@]}" tee "$policy" >/dev/null
        "${as_root[@]}" chmod 755 "$policy"
        added_policy=1
    fi

    apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)
    say "installing from Debian's packages: ${pkgs[*]}"
    # A failing extra source should not stop us: the install below says
    # clearly whether the packages could be had.
    "${apt[@]}" update >&2 || say "warning: apt-get update failed; trying the install anyway"
    "${apt[@]}" install -y --no-install-recommends "${pkgs[@]}" >&2 ||
        die "apt-get install ${pkgs[*]} failed"

    cleanup
    added_policy=0
    trap - EXIT
fi

have_softhsm || die "SoftHSM2 is still missing after the install (softhsm2-util or libsofthsm2.so not found)"
if [[ $want_postgres == 1 ]]; then
    have_postgres || die "PostgreSQL server binaries still missing after the install (/usr/lib/postgresql/*/bin/postgres)"
fi

module=$(find_softhsm_module)
say "SoftHSM2 $(softhsm2-util --version 2>/dev/null || echo '?') at $module"
if [[ $want_postgres == 1 ]]; then
    say "PostgreSQL server: $(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1)"
fi
if [[ $print_module == 1 ]]; then
    printf '%s\n' "$module"
fi
