#!/usr/bin/env bash
# Create (once) a project-local SoftHSM2 token for the KMS.
#
#   softhsm-setup/setup-token.sh [--dir DIR] [--label LABEL] [--quiet]
#
#   --dir DIR      where the token store, its config and the PIN files live
#                  (default: <repo>/var/softhsm)
#   --label LABEL  the token's label, 1 to 32 characters (default: kms)
#   --quiet        print only the KEY=VALUE lines below
#
# Installs SoftHSM2 if missing (softhsm-setup/install.sh), then creates
#   DIR/softhsm2.conf   SoftHSM2 config whose token directory is DIR/tokens
#   DIR/tokens/         the token store (nothing global is touched: /etc/softhsm
#                       is never read or written, SOFTHSM2_CONF points here)
#   DIR/user.pin        the token's user (CKU_USER) PIN, mode 0600
#   DIR/so.pin          the token's Security Officer PIN, mode 0600
# The PINs are random (TSM-AC-1: no default PINs) and never printed.
# Idempotent: if a token with LABEL already exists, nothing changes.
#
# Ends by printing, on stdout, lines a caller can `eval`:
#   SOFTHSM2_CONF=...  KMS_PKCS11_MODULE=...  KMS_TOKEN_LABEL=...
#   KMS_USER_PIN_FILE=...  KMS_SO_PIN_FILE=...
# (paths only, never PIN values; progress messages go to stderr).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/.." && pwd -P)

dir="$repo/var/softhsm"
label=kms
quiet=0

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
say() { if [[ $quiet == 0 ]]; then printf 'setup-token.sh: %s\n' "$*" >&2; fi; }
die() { printf 'setup-token.sh: error: %s\n' "$*" >&2; exit 1; }

while (($#)); do
    case $1 in
        --dir) (($# >= 2)) || die "--dir needs a value"; dir=$2; shift ;;
        --dir=*) dir=${1#--dir=} ;;
        --label) (($# >= 2)) || die "--label needs a value"; label=$2; shift ;;
        --label=*) label=${1#--label=} ;;
        -q | --quiet) quiet=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

[[ -n $dir ]] || die "--dir must not be empty"
# A PKCS#11 token label is 32 bytes, blank-padded: softhsm2-util shows it
# padded, so leading/trailing blanks could not be told apart from the padding.
label_bytes=$(LC_ALL=C; printf '%s' "${#label}")
[[ -n $label && $label_bytes -le 32 ]] || die "the label must be 1 to 32 bytes long: '$label'"
[[ $label != [[:space:]]* && $label != *[[:space:]] && $label != *$'\n'* ]] ||
    die "the label must not start or end with blanks: '$label'"

install_args=(--print-module)
if [[ $quiet == 1 ]]; then install_args+=(--quiet); fi
module=$("$here/install.sh" "${install_args[@]}")

# Everything created from here on is private to this user: the PIN files are
# created 0600 by umask before a byte is written to them.
umask 077

if [[ ! -d $dir ]]; then
    mkdir -p -- "$dir"
    chmod 700 -- "$dir"
fi
dir=$(cd -- "$dir" && pwd -P)
tokens="$dir/tokens"
conf="$dir/softhsm2.conf"
user_pin_file="$dir/user.pin"
so_pin_file="$dir/so.pin"
mkdir -p -- "$tokens"

# One setup at a time per DIR (two at once could make two tokens).
exec 9>"$dir/.setup.lock"
flock 9

# --- SoftHSM2 config (rewritten only if it differs, e.g. after DIR moved) ---
conf_text="# SoftHSM2 config for the KMS's project-local token; written by
# softhsm-setup/setup-token.sh. Use it with SOFTHSM2_CONF=$conf
directories.tokendir = $tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
"
if [[ ! -f $conf ]] || [[ $(<"$conf")$'\n' != "$conf_text" ]]; then
    tmp=$(mktemp "$dir/.softhsm2.conf.XXXXXX")
    printf '%s' "$conf_text" >"$tmp"
    chmod 644 "$tmp" # no secret in it
    mv -f -- "$tmp" "$conf"
    say "wrote $conf"
fi
export SOFTHSM2_CONF=$conf

# How many initialized tokens in this store carry exactly $label?
count_tokens() {
    local out line value n=0
    out=$(softhsm2-util --show-slots) || die "softhsm2-util --show-slots failed (SOFTHSM2_CONF=$conf)"
    while IFS= read -r line; do
        if [[ $line =~ ^[[:space:]]*Label:(.*)$ ]]; then
            value=${BASH_REMATCH[1]}
            value=${value#"${value%%[![:space:]]*}"} # trim leading blanks
            value=${value%"${value##*[![:space:]]}"} # trim the padding
            if [[ $value == "$label" ]]; then n=$((n + 1)); fi
        fi
    done <<<"$out"
    printf '%s\n' "$n"
}

# A PIN file must be a non-empty regular file holding one line of printable
# characters; prints the PIN (for a variable, never to the terminal).
read_pin() {
    local f=$1 pin
    [[ -f $f && ! -L $f ]] || die "$f is not a regular file"
    pin=$(<"$f")
    [[ -n $pin && $pin != *$'\n'* && $pin =~ ^[[:print:]]+$ ]] ||
        die "$f does not hold a PIN (one line of printable characters); delete it to have a new one made"
    ((${#pin} >= 4 && ${#pin} <= 255)) || die "$f: a SoftHSM2 PIN has 4 to 255 characters"
    printf '%s' "$pin"
}

# 24 characters from [A-Za-z0-9] read from /dev/urandom (about 142 bits).
new_pin() {
    local raw=""
    while ((${#raw} < 24)); do
        raw+=$(head -c 48 /dev/urandom | base64 -w 0 | tr -dc 'A-Za-z0-9')
    done
    printf '%s' "${raw:0:24}"
}

# Create $1 holding $2, mode 0600 from birth, atomically, never overwriting.
# No trailing newline: readers need not trim (they should anyway).
write_pin() {
    local f=$1 pin=$2 tmp
    tmp=$(mktemp "$dir/.pin.XXXXXX") # mktemp creates it 0600, empty
    chmod 600 -- "$tmp"
    printf '%s' "$pin" >"$tmp" # printf is a builtin: the PIN is in no argv
    if ! ln -- "$tmp" "$f" 2>/dev/null; then
        rm -f -- "$tmp"
        die "$f appeared while this script ran (is another setup running?)"
    fi
    rm -f -- "$tmp"
}

fix_mode() {
    local f=$1 mode
    mode=$(stat -c '%a' -- "$f")
    if [[ $mode != 600 ]]; then
        chmod 600 -- "$f"
        say "warning: $f had mode $mode; set it to 600"
    fi
}

n=$(count_tokens)
if ((n > 1)); then
    die "$n tokens labelled '$label' in $tokens; delete the extra ones (softhsm2-util --delete-token --serial ...)"
elif ((n == 1)); then
    for f in "$user_pin_file" "$so_pin_file"; do
        [[ -e $f ]] || die "token '$label' exists in $tokens but $f is missing: restore it, or delete the token (SOFTHSM2_CONF=$conf softhsm2-util --delete-token --token '$label') and run this again"
        read_pin "$f" >/dev/null
        fix_mode "$f"
    done
    say "token '$label' already exists in $tokens; nothing to do"
else
    # No token yet: reuse PIN files left by an earlier, interrupted run,
    # otherwise make new ones.
    for f in "$user_pin_file" "$so_pin_file"; do
        if [[ -e $f ]]; then
            read_pin "$f" >/dev/null
            fix_mode "$f"
            say "reusing the PIN in $f"
        else
            write_pin "$f" "$(new_pin)"
            say "generated a random PIN into $f (mode 0600)"
        fi
    done
    user_pin=$(read_pin "$user_pin_file")
    so_pin=$(read_pin "$so_pin_file")
    # softhsm2-util takes PINs only as arguments (its prompts need a terminal),
    # so for the fraction of a second it runs they can be seen in `ps` by
    # users of this machine. Accepted for a development token; the production
    # HSM's ceremonies set PINs on the HSM itself.
    init_out=$(softhsm2-util --init-token --free --label "$label" --pin "$user_pin" --so-pin "$so_pin" 2>&1) ||
        die "softhsm2-util --init-token failed: $init_out"
    unset user_pin so_pin
    [[ $(count_tokens) == 1 ]] || die "token '$label' not found after initializing it: $init_out"
    say "initialized token '$label' in $tokens (${init_out##*$'\n'})"
fi

for kv in "SOFTHSM2_CONF=$conf" "KMS_PKCS11_MODULE=$module" "KMS_TOKEN_LABEL=$label" \
    "KMS_USER_PIN_FILE=$user_pin_file" "KMS_SO_PIN_FILE=$so_pin_file"; do
    printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"
done
