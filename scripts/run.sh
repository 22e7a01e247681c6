#!/usr/bin/env bash
# The README's first command: from a fresh Debian machine to a running KMS.
#
#   scripts/run.sh
#
# 1. installs SoftHSM2 if missing            (softhsm-setup/install.sh)
# 2. builds kms and kms-ceremony             (cargo build --release -p kms -p ceremony)
# 3. creates the project-local token, once   (softhsm-setup/setup-token.sh,
#    into var/softhsm, with random PINs in 0600 files)
# 4. writes kms.toml if there is none (an existing one is never touched)
# 5. kms init, kms status
# 6. if this kms has a server: a development PKI, once (kms dev-pki, into
#    var/pki), then exec kms serve; else says how to use the CLI.
# Running it again re-uses the token, the PINs and kms.toml.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"

step() { printf '\n==> %s\n' "$*" >&2; }

step "SoftHSM2"
softhsm-setup/install.sh

step "building kms (release)"
cargo build --release -p kms -p ceremony
kms=$repo/target/release/kms

step "project-local SoftHSM2 token (var/softhsm)"
setup_out=$(softhsm-setup/setup-token.sh --dir "$repo/var/softhsm" --label kms)
# Only paths come back (SOFTHSM2_CONF, KMS_PKCS11_MODULE, ...), never PINs.
eval "$setup_out"

config=$repo/kms.toml
if [[ -e $config ]]; then
    step "keeping the existing $config"
else
    step "writing $config"
    # Paths are relative to kms.toml's directory. The PINs are read from the
    # 0600 files; "env:KMS_USER_PIN" would read an environment variable.
    tmp=$(mktemp "$repo/.kms.toml.XXXXXX")
    cat >"$tmp" <<TOML
# KMS configuration, written by scripts/run.sh for the project-local SoftHSM2
# token. Relative paths are relative to this file's directory; KMS_* environment
# variables override these settings.

[hsm]
# PKCS#11 module of the HSM (SoftHSM2 here; a production HSM's module otherwise)
module = "$KMS_PKCS11_MODULE"
token_label = "$KMS_TOKEN_LABEL"
# "file:PATH" reads the PIN from a file (keep it mode 0600); "env:NAME" from a variable
user_pin = "file:var/softhsm/user.pin"
so_pin = "file:var/softhsm/so.pin"
# exported as SOFTHSM2_CONF before the module is loaded (SoftHSM2 only)
softhsm2_conf = "var/softhsm/softhsm2.conf"

[database]
url = "sqlite://var/kms.db?mode=rwc"

[policy]
dir = "policies"

[server]
# kms serve: mutually authenticated TLS; every client needs a certificate from
# client_ca, mapped to a principal in the principals file. Loopback only here.
admin_listen = "127.0.0.1:8443"          # security officers (audit), metrics
provisioning_listen = "127.0.0.1:8444"   # OTA provisioning
# The development PKI made by \`kms dev-pki --dir var/pki\` (keys 0600); use
# your organisation's CA and certificates anywhere else.
tls_cert = "var/pki/server.crt"
tls_key = "var/pki/server.key"
client_ca = "var/pki/ca.crt"
# crl = "var/pki/ca.crl"                 # revoked client certificates (PEM)
principals = "var/pki/principals.toml"   # see policies/principals.toml
TOML
    chmod 644 "$tmp"
    # No-clobber even if kms.toml appeared meanwhile.
    if ! ln "$tmp" "$config" 2>/dev/null; then
        printf 'run.sh: %s appeared meanwhile; keeping it\n' "$config" >&2
    fi
    rm -f "$tmp"
fi

# kms reads $KMS_CONFIG, else ./kms.toml: name this one whatever the caller had.
export KMS_CONFIG=$config

step "kms init"
"$kms" init

step "kms status"
"$kms" status

if "$kms" serve --help >/dev/null 2>&1; then
    step "development PKI (var/pki)"
    # Made once, then kept: the TLS certificates and keys of the server and
    # of two development clients (an officer, a provisioner), never HSM keys.
    "$kms" dev-pki --dir "$repo/var/pki"
    if ! grep -q '^\[server\]' "$config"; then
        printf 'run.sh: %s has no [server] section: the server uses %s\n' "$config" \
            "policies/principals.toml, which does not map the dev-pki certificates;" >&2
        printf '        add  [server] principals = "var/pki/principals.toml"  to use them\n' >&2
    fi
    step "kms serve"
    exec "$kms" serve
fi

cat >&2 <<MSG

This kms has no server yet; use the command line (from $repo, which holds kms.toml):
  $kms --help
  $kms key create --help          # e.g. create a key in the HSM
  $kms status
MSG
