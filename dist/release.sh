#!/usr/bin/env bash
# The release binary for the vendor's VM profile (64-bit Linux, glibc 2.28: RHEL 8 and newer,
# Debian 10 and newer): built against glibc 2.28 with cargo-zigbuild and zig from PyPI, then
# checked: no symbol may need a newer glibc. Installs what it needs when missing (pip, cargo).
# Leaves the binary in target/dist/exec-allinone and prints the highest GLIBC version it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.28
TARGET=x86_64-unknown-linux-gnu
[ "$(uname -m)" = x86_64 ] || { echo "release.sh builds for x86_64 only (this is $(uname -m))" >&2; exit 1; }
python3 -c 'import ziglang' 2>/dev/null || python3 -m pip install -q ziglang
command -v cargo-zigbuild >/dev/null || cargo install -q --locked cargo-zigbuild
cargo zigbuild --release --locked --quiet --bin exec-allinone --target "$TARGET.$GLIBC"
built=${CARGO_TARGET_DIR:-target}/$TARGET/release/exec-allinone
mkdir -p target/dist
cp "$built" target/dist/exec-allinone

# The newest GLIBC_x.y any dynamic symbol needs.
needed=$(objdump -T target/dist/exec-allinone | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n -u | tail -1)
echo "target/dist/exec-allinone needs glibc $needed at most (allowed: $GLIBC)"
newest=$(printf '%s\n%s\n' "$needed" "$GLIBC" | sort -t. -k1,1n -k2,2n -k3,3n | tail -1)
[ "$newest" = "$GLIBC" ] || { echo "the binary needs glibc $needed, newer than $GLIBC" >&2; exit 1; }
target/dist/exec-allinone --version
