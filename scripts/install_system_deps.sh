#!/usr/bin/env bash
# System packages the test suite needs, and the local two-node Slurm test cluster.
# Needs root (CI and the development machines run as root). Without root it only reports what
# is missing: the Slurm tests then skip with a reason (or fail when AIN_REQUIRE_SLURM=1).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
    echo "install_system_deps.sh: not root; skipping apt packages and the test cluster" >&2
    exit 0
fi
bash "$HERE/tests/cluster/up.sh"
