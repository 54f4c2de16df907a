#!/usr/bin/env bash
# The one test command (README): every unit, conformance and black-box test, then the manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
# Bounded fuzzing of the parsers (about 2.5 min; replays the corpus, then 20 s per target).
bash tests/fuzz_smoke.sh
if [ -f tests/k8s/validate.sh ]; then
    bash tests/k8s/validate.sh
fi
# The container image: static build, buildah from scratch, podman/crun run in a namespace.
bash tests/image.sh
