#!/usr/bin/env bash
# Validates podpbx's deployment files: builds every kustomization under k8s/, validates each
# object against its schema (Kubernetes 1.30 with kubernetes-validate --strict; Calico kinds with
# check-jsonschema against a strict schema derived from the Calico CRD in tests/k8s/schemas), checks
# that the pinned addresses agree everywhere (tests/k8s/consistency.py), runs `podpbx check` on
# the rendered podpbx.toml, and checks that broken inputs are rejected.
#
#   bash tests/k8s/validate.sh
#
# Needs: python3 (venv), kubectl with kustomize v5 (or a kustomize v5 binary), cargo for the
# `podpbx check` step. Environment:
#   PODPBX_SCHEMA_DIR  folder with the Calico CRDs (default: tests/k8s/schemas, in the repository)
#   PODPBX_K8S_VENV    venv for the Python tools (default /tmp/podpbx-k8s-venv, reused)
#   PODPBX_BIN         podpbx binary for `podpbx check`; unset: built with cargo; `none`: skip
# Ends with `k8s: N passed, N failed[, N skipped]`; exits non-zero if anything failed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/../.." && pwd))
schemas=${PODPBX_SCHEMA_DIR:-$here/schemas}
venv=${PODPBX_K8S_VENV:-/tmp/podpbx-k8s-venv}
k8s_version=1.30.0
cd "$root" || exit 2

work=$(mktemp -d "${TMPDIR:-/tmp}/podpbx-k8s.XXXXXX")
trap 'rm -rf "$work"' EXIT
passed=0 failed=0 skipped=0

pass() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$1"; [ -s "$work/log" ] && sed 's/^/      /' "$work/log"; :; }
skip() { skipped=$((skipped + 1)); printf 'skip  %s\n' "$1"; }
# run NAME CMD...: passes when CMD succeeds.
run() { local name=$1; shift; if "$@" </dev/null >"$work/log" 2>&1; then pass "$name"; else fail "$name"; fi; }
# reject NAME CMD...: passes when CMD fails (a deliberately broken input).
reject() {
    local name=$1; shift
    if "$@" </dev/null >"$work/log" 2>&1; then fail "$name (was accepted)"; else pass "$name"; fi
}
finish() {
    printf '\nk8s: %d passed, %d failed' "$passed" "$failed"
    [ "$skipped" -gt 0 ] && printf ', %d skipped' "$skipped"
    printf '\n'
    [ "$failed" -eq 0 ]
    exit
}

# --- tools -----------------------------------------------------------------------------------
req=$here/requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/.podpbx-requirements"; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >"$work/log" 2>&1; then
        # Debian's own python3 keeps venv in a separate package.
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get install -y -q python3-venv >>"$work/log" 2>&1 && rm -rf "$venv" &&
                python3 -m venv "$venv" >>"$work/log" 2>&1
        fi
    fi
    if [ -x "$venv/bin/pip" ] &&
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >>"$work/log" 2>&1; then
        cp "$req" "$venv/.podpbx-requirements"
    else
        fail "install Python tools into $venv"
        finish
    fi
fi
py=$venv/bin/python

if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    build() { kubectl kustomize "$1"; }
    kversion=$(kubectl version --client -o json 2>/dev/null |
        "$py" -c 'import json,sys; print(json.load(sys.stdin).get("kustomizeVersion", "?"))')
    kname="kubectl $(kubectl version --client -o json 2>/dev/null |
        "$py" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
elif command -v kustomize >/dev/null; then
    build() { kustomize build "$1"; }
    kversion=$(kustomize version 2>/dev/null | grep -o 'v[0-9][0-9.]*' | head -n 1)
    kname=kustomize
else
    : >"$work/log"
    fail "no kustomize: install kubectl (1.27 or later; Debian's kubernetes-client is too old) or kustomize v5"
    finish
fi
echo "tools: $kname (kustomize $kversion), kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -n 1)" \
    "for Kubernetes $k8s_version, check-jsonschema $("$venv/bin/check-jsonschema" --version 2>&1 | grep -o '[0-9][0-9.]*' | head -n 1)"
case $kversion in
v[5-9]* | v[1-9][0-9]*) ;;
*) : >"$work/log"; fail "kustomize $kversion is too old: replacements and allowKindChange need v5"; finish ;;
esac

# --- schemas for the Calico kinds --------------------------------------------------------------
mkdir -p "$work/schemas"
ippool_crd=$schemas/crd.projectcalico.org_ippools.yaml
if [ -f "$ippool_crd" ]; then
    run "IPPool schema from $(basename "$ippool_crd")" \
        "$py" "$here/manifests.py" crd-schema "$ippool_crd" "$work/schemas/IPPool.json"
else
    : >"$work/log"; fail "IPPool CRD not found at $ippool_crd (set PODPBX_SCHEMA_DIR)"
fi
for kind in BGPConfiguration BGPPeer; do
    lower=$(tr '[:upper:]' '[:lower:]' <<<"$kind")
    crd=$schemas/crd.projectcalico.org_${lower}s.yaml
    if [ -f "$crd" ]; then
        run "$kind schema from $(basename "$crd")" "$py" "$here/manifests.py" crd-schema "$crd" "$work/schemas/$kind.json"
    else
        cp "$here/schemas/$lower.json" "$work/schemas/$kind.json"
    fi
done

# validate_object KIND APIVERSION FILE: validates one object with the validator for its kind.
validate_object() {
    case $1 in
    IPPool | BGPConfiguration | BGPPeer)
        [ -f "$work/schemas/$1.json" ] || { echo "no schema for $1"; return 1; }
        # Kubernetes patterns are Go regular expressions, closer to Python's than to ECMAScript's.
        "$venv/bin/check-jsonschema" --regex-variant python --schemafile "$work/schemas/$1.json" "$3"
        ;;
    *)
        # kubernetes-validate only warns about kinds it has no schema for: allow Kubernetes' own.
        case $2 in
        */*.*) case $2 in *.k8s.io/*) ;; *) echo "no schema for $1 ($2)"; return 1 ;; esac ;;
        esac
        "$venv/bin/kubernetes-validate" -k "$k8s_version" --strict --quiet "$3"
        ;;
    esac
}
# validate_file LABEL FILE [reject]: every object in FILE, one result each.
validate_file() {
    local label=$1 file=$2 mode=${3:-} dir kind api obj
    dir=$work/objects/$label
    "$py" "$here/manifests.py" split "$file" "$dir" >"$work/objects.tsv" || { fail "split $label"; return; }
    while IFS=$'\t' read -r kind api obj; do
        if [ "$mode" = reject ]; then
            reject "$label rejected: $kind" validate_object "$kind" "$api" "$obj"
        else
            run "$label: $kind $(basename "$obj" .yaml | cut -d- -f3-) valid" validate_object "$kind" "$api" "$obj"
        fi
    done <"$work/objects.tsv"
}

# --- build and validate every kustomization -----------------------------------------------------
mkdir -p "$work/render"
builds=()
for dir in k8s/base k8s/overlays/*/ k8s/calico; do
    dir=${dir%/}
    [ -f "$dir/kustomization.yaml" ] || continue
    name=${dir#k8s/}
    name=${name//\//-}
    out=$work/render/$name.yaml
    if build "$dir" >"$out" 2>"$work/log"; then
        pass "kustomize build $dir"
        validate_file "$name" "$out"
        builds+=("$name:$dir")
    else
        fail "kustomize build $dir"
    fi
done
validate_file secret.example k8s/base/secret.example.yaml

# --- the pinned addresses agree everywhere -------------------------------------------------------
for b in "${builds[@]}"; do
    name=${b%%:*} dir=${b#*:}
    [ "$name" = calico ] && continue
    # An overlay with its own addresses.yaml must show exactly those values; others the base's.
    addresses=k8s/base/addresses.yaml
    [ -f "$dir/addresses.yaml" ] && addresses=$dir/addresses.yaml
    run "consistency $name (addresses from $addresses)" "$py" "$here/consistency.py" \
        "$work/render/$name.yaml" --addresses "$addresses" \
        --dockerfile docker/Dockerfile --secret-example k8s/base/secret.example.yaml
done

# --- and the checks above catch what they claim to ---------------------------------------------
if [ -f "$work/render/base.yaml" ]; then
    for m in $("$py" "$here/consistency.py" --list-mutations); do
        reject "consistency rejects mutation $m" "$py" "$here/consistency.py" "$work/render/base.yaml" \
            --mutate "$m" --dockerfile docker/Dockerfile --secret-example k8s/base/secret.example.yaml
    done
fi
for f in "$here"/fixtures/invalid-*.yaml; do
    validate_file "fixtures/$(basename "$f")" "$f" reject
done
run ".dockerignore keeps target/ and .git out of the build context" \
    grep -qxE '(target|/target|target/)' .dockerignore
run ".dockerignore excludes .git" grep -qxE '(\.git|/\.git|\.git/)' .dockerignore

# --- podpbx itself accepts the rendered config --------------------------------------------------
bin=${PODPBX_BIN:-}
if [ "$bin" = none ]; then
    skip "podpbx check (PODPBX_BIN=none)"
elif [ -z "$bin" ] && ! command -v cargo >/dev/null; then
    skip "podpbx check (no cargo to build podpbx; set PODPBX_BIN)"
else
    if [ -z "$bin" ]; then
        if cargo build --quiet --locked -p podpbx --bin podpbx >"$work/log" 2>&1; then
            bin=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
                "$py" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/podpbx
        else
            fail "cargo build -p podpbx (for podpbx check)"
            bin=
        fi
    fi
    if [ -n "$bin" ]; then
        for b in "${builds[@]}"; do
            name=${b%%:*}
            [ "$name" = calico ] && continue
            cfg=$("$py" "$here/manifests.py" podpbx-config "$work/render/$name.yaml" \
                k8s/base/secret.example.yaml "$work/config-$name")
            run "podpbx check: podpbx.toml of $name" "$bin" check --config "$cfg"
        done
    fi
fi

finish
