#!/usr/bin/env bash
# Builds the podpbx binary the container image ships, the one way both image paths use it
# (docker/Dockerfile's build stage, and tests/image.sh with buildah): Cargo.toml's `image` profile
# (release with fat LTO and one codegen unit: 10.6 -> 9.3 MB, and no slower to build on two
# cores; stripped, no debuginfo, no symbol table: another 1.7 MB; panics still name file and line,
# only RUST_BACKTRACE frames lose their names; the crates off the packet and request path
# optimised for size: 10.03 -> 9.25 MB), statically linked against glibc
# (`-C target-feature=+crt-static` on the gnu target), then lays out the image's root filesystem:
#
#   OUT/rootfs/usr/local/bin/podpbx   the binary (0755); nothing else: TLS roots are built in
#   OUT/data/                         empty; becomes the image's /var/lib/podpbx (uid 65532)
#
#   docker/build-static.sh OUT
#
# Static glibc and name lookups: getaddrinfo/getpwnam in a static glibc binary need glibc's NSS
# modules at run time, which a scratch image does not have. podpbx uses none of them for its own
# work (see docs/deploy.md, "The image"); this script fails if the binary is not fully static.
# Environment: CARGO_TARGET_DIR as usual; PODPBX_TARGET overrides the target triple (default:
# rustc's host, which must be a -gnu target).
set -euo pipefail
out=${1:?usage: docker/build-static.sh OUT}
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=${PODPBX_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}
case $target in
*-linux-gnu*) ;;
*) echo "build-static.sh: $target is not a linux-gnu target" >&2; exit 2 ;;
esac
# --target keeps +crt-static off build scripts and proc macros (they must stay dynamic).
export RUSTFLAGS="-C target-feature=+crt-static"
cargo build --profile image --locked --target "$target" -p podpbx --bin podpbx

target_dir=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
bin=$target_dir/$target/image/podpbx
# Fully static: no program interpreter, no shared libraries.
if readelf -l "$bin" | grep -q 'INTERP' || readelf -d "$bin" | grep -q '(NEEDED)'; then
    echo "build-static.sh: $bin is not statically linked" >&2
    readelf -d "$bin" | grep NEEDED >&2 || true
    exit 1
fi

rm -rf "$out/rootfs" "$out/data"
install -D -m 0755 "$bin" "$out/rootfs/usr/local/bin/podpbx"
install -d -m 0755 "$out/data"
echo "build-static.sh: $(du -k "$out/rootfs/usr/local/bin/podpbx" | cut -f1) KiB static podpbx for $target in $out"
