#!/usr/bin/env bash
# Runs the whole kruntimes test suite on a fresh machine: installs the system
# packages the tests need (Graphviz, to check `krt graph --format dot`;
# ShellCheck, for the step catalog's tests),
# builds the Kubernetes 1.20 test cluster's binaries once (cached under
# ~/.cache/kruntimes; see tests/cluster/build.sh), then runs every test of
# every crate.
#
#   bash tests/run.sh            # all tests
#   bash tests/run.sh plan::     # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v dot >/dev/null 2>&1; then
    echo "tests/run.sh: installing graphviz (for the DOT output test)" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null
fi

# The step catalog's entries run for real in tests/tests/e2e/catalog.rs;
# ShellCheck is the one tool of theirs a fresh machine lacks (Go comes with
# the test cluster's build below; cargo, Python, npm, tar, zstd and git are
# on the machine).
if ! command -v shellcheck >/dev/null 2>&1; then
    echo "tests/run.sh: installing shellcheck (for the catalog's shellcheck entry)" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi

# kube-apiserver and kube-controller-manager from Debian's source package,
# etcd and kubectl from Debian's packages: several minutes the first time,
# a cache check afterwards.
KRT_CLUSTER_BIN="$(bash tests/cluster/build.sh | tail -n 1)"
export KRT_CLUSTER_BIN

# Incremental compilation only pays off when editing; here it would write
# another 2.5 GB of caches.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The end-to-end tests run the real `krt` binary, which `cargo test` does not
# build (it lives in another package). Building it together with the tests
# (`--tests`) gives it the same feature set as the tests' dependencies, so the
# dependency tree is compiled once, not once for the binary and again for the
# tests.
cargo build --workspace --locked --bins --tests
cargo test --workspace --locked "$@"
