#!/usr/bin/env bash
# The .deb and .rpm for VMs, made from the release binary that dist/release.sh leaves in
# target/dist/exec-allinone (glibc 2.28, so the .rpm runs on RHEL 8): `dist/release.sh &&
# dist/packages.sh`. Installs cargo-deb and cargo-generate-rpm when missing. What goes in is
# [package.metadata.deb] and [package.metadata.generate-rpm] in Cargo.toml, with the maintainer
# scripts in dist/deb/ and dist/rpm/. Leaves target/dist/exec-allinone_<version>-1_amd64.deb and
# target/dist/exec-allinone-<version>-1.x86_64.rpm and prints their names; dist/test-packages.sh
# checks them.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/dist/exec-allinone
[ -x "$bin" ] || { echo "packages.sh: $bin is missing: run dist/release.sh first" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
built=$("$bin" --version)
[ "$built" = "exec-allinone $version" ] ||
  { echo "packages.sh: $bin is '$built', Cargo.toml says $version: run dist/release.sh again" >&2; exit 1; }

command -v cargo-deb >/dev/null || cargo install -q --locked cargo-deb --version 3.8.0
command -v cargo-generate-rpm >/dev/null || cargo install -q --locked cargo-generate-rpm --version 0.21.1

# Reproducible: file times and the build date are the last commit's.
if [ -z "${SOURCE_DATE_EPOCH:-}" ] && git rev-parse --git-dir >/dev/null 2>&1; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
  export SOURCE_DATE_EPOCH
fi

deb=target/dist/exec-allinone_${version}-1_amd64.deb
rpm=target/dist/exec-allinone-${version}-1.x86_64.rpm
rm -f "$deb" "$rpm"
# --no-build: the binary is dist/release.sh's; --no-strip: it keeps its line tables (backtraces).
cargo deb --no-build --no-strip --no-separate-debug-symbols --quiet --output "$deb"
# xz, not the default zstd: what RHEL 8's own packages use.
cargo generate-rpm --payload-compress xz --arch x86_64 --output "$rpm"
for f in "$deb" "$rpm"; do
  [ -s "$f" ] || { echo "packages.sh: $f was not made" >&2; exit 1; }
done
ls -l "$deb" "$rpm"
