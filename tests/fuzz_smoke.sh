#!/usr/bin/env bash
# Bounded fuzz smoke test (CI): every target of fuzz/ for FUZZ_SECS seconds (default 20) with
# libFuzzer on the stable toolchain, after the deterministic corpus replay.
#
#   bash tests/fuzz_smoke.sh            # replay + coverage-guided smoke run
#   FUZZ_SECS=300 bash tests/fuzz_smoke.sh   # longer runs, same script
#   FUZZ_REPLAY_ONLY=1 bash tests/fuzz_smoke.sh
#
# 1. Always: the checked-in corpus (fuzz/corpus/<target>/) and the fuzz regressions through the
#    same harness code as normal `cargo test`s (crates/sip/tests/{corpus_replay,fuzz_regressions}.rs,
#    crates/sdp/tests/corpus_replay.rs, crates/media/tests/corpus_replay.rs). Deterministic; these also run in `cargo test --workspace`.
# 2. If the instrumented build fits in FUZZ_SETUP_BUDGET seconds (default 180): libFuzzer runs.
#    No cargo-fuzz and no nightly needed: plain `cargo build` with the flags cargo-fuzz passes
#    (`-Cpasses=sancov-module ...`, all stable) and libfuzzer-sys compiling libFuzzer with the
#    system C++ compiler. A build that does not fit the budget (or has no C++ compiler) is
#    reported and skipped: step 1 already ran. A crash fails the script and prints the input.
#
# Working corpora and crash artifacts go to a temporary directory / fuzz/artifacts/, never into
# the checked-in corpus. Bounded: FUZZ_SECS per target, plus the build budget.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECS=${FUZZ_SECS:-20}
FUZZ_SETUP_BUDGET=${FUZZ_SETUP_BUDGET:-180}
TARGETS=(sip_message sdp digest rtp_classify)
TRIPLE=${FUZZ_TRIPLE:-$(rustc -vV | sed -n 's/^host: //p')}

echo "== fuzz smoke: deterministic corpus replay"
cargo test --locked -p podpbx-sip --test corpus_replay --test fuzz_regressions
cargo test --locked -p podpbx-sdp --test corpus_replay
cargo test --locked -p podpbx-media --test corpus_replay
if [ -f crates/media/tests/fuzz_regressions.rs ]; then
    cargo test --locked -p podpbx-media --test fuzz_regressions
fi

if [ "${FUZZ_REPLAY_ONLY:-0}" = 1 ]; then
    echo "== fuzz smoke: FUZZ_REPLAY_ONLY=1, libFuzzer runs skipped"
    exit 0
fi
if ! command -v c++ >/dev/null 2>&1; then
    echo "== fuzz smoke: no C++ compiler for libFuzzer; libFuzzer runs skipped (replay done)"
    exit 0
fi

# The flags cargo-fuzz 0.13 passes with `--sanitizer none` (stable rustc accepts all of them).
# --target keeps them off build scripts and proc-macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Ccodegen-units=1"
echo "== fuzz smoke: building the fuzz targets (budget ${FUZZ_SETUP_BUDGET}s)"
start=$(date +%s)
# Not --locked: fuzz/Cargo.lock may lag a dependency another crate just added.
if ! timeout "$FUZZ_SETUP_BUDGET" cargo build --release --manifest-path fuzz/Cargo.toml \
    --target "$TRIPLE" --bins; then
    echo "== fuzz smoke: instrumented build failed or exceeded ${FUZZ_SETUP_BUDGET}s; libFuzzer runs skipped (replay done)"
    exit 0
fi
unset RUSTFLAGS
echo "== fuzz smoke: built in $(( $(date +%s) - start ))s"

bin=fuzz/target/$TRIPLE/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    dict=()
    case $t in
        sip_message) dict=(-dict=fuzz/dict/sip.dict) ;;
        sdp) dict=(-dict=fuzz/dict/sdp.dict) ;;
        digest) dict=(-dict=fuzz/dict/digest.dict) ;;
    esac
    echo "== fuzz smoke: $t for ${FUZZ_SECS}s"
    # timeout: a hard bound even if libFuzzer's own -max_total_time were ignored.
    if timeout $(( FUZZ_SECS + 60 )) "$bin/$t" "$work/$t" "fuzz/corpus/$t" "${dict[@]}" \
        -max_total_time="$FUZZ_SECS" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$work/$t.log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$work/$t.log" || true
    else
        failed=1
        echo "!! fuzz target $t failed:"
        grep -v -E '^#[0-9]+' "$work/$t.log" | tail -60
        for f in "fuzz/artifacts/$t"/*; do
            [ -f "$f" ] || continue
            echo "!! input $f (base64):"
            base64 -w 100 "$f"
        done
    fi
done
if [ "$failed" = 1 ]; then
    echo "== fuzz smoke: FAILED (turn each input above into a test in the owning crate's tests/fuzz_regressions.rs)"
    exit 1
fi
echo "== fuzz smoke: ${#TARGETS[@]} targets passed"
