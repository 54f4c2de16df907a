#!/usr/bin/env bash
# The one test command (README): every unit, conformance and black-box test, then the manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
if [ -f tests/k8s/validate.sh ]; then
    bash tests/k8s/validate.sh
fi
