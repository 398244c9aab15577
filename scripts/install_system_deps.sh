#!/usr/bin/env bash
# System packages the suite and its tests need: WordNet for METEOR (scripts/install_wordnet.sh),
# Debian's chromium for the review site's headless-browser test (tests/e2e/test_review_browser.py)
# and the local two-node Slurm test cluster (tests/cluster/up.sh installs slurm-wlm and munge).
# Needs root (CI and the development machines run as root). Without root it says what it skips:
# the Slurm tests then skip with a reason (or fail when AIN_REQUIRE_SLURM=1).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
    echo "install_system_deps.sh: not root; skipping apt packages and the test cluster" >&2
    exit 0
fi
if [ ! -f /var/lib/apt/lists/.ain-updated ] && ! dpkg-query -W wordnet-base >/dev/null 2>&1; then
    apt-get update -qq && touch /var/lib/apt/lists/.ain-updated
fi
bash "$HERE/scripts/install_wordnet.sh"
if ! command -v chromium >/dev/null 2>&1; then
    [ -f /var/lib/apt/lists/.ain-updated ] || { apt-get update -qq && touch /var/lib/apt/lists/.ain-updated; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
bash "$HERE/tests/cluster/up.sh"
