#!/usr/bin/env bash
# The project's test command (the README's): installs what the tests need if
# missing (SoftHSM2, PostgreSQL's server binaries, Chromium for the audit
# report test: softhsm-setup/install.sh),
# then runs the whole workspace's tests with cargo-nextest.
#
#   scripts/test.sh [extra nextest arguments, e.g. a test-name filter]
#
# The tests make their own SoftHSM2 tokens (SOFTHSM2_CONF in a temporary
# directory) and start their own PostgreSQL on loopback; nothing is started
# here. nextest does not run doctests, and this runs nothing else.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"

bash softhsm-setup/install.sh --postgres --browser

exec cargo nextest run --workspace --no-fail-fast "$@"
