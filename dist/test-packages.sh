#!/usr/bin/env bash
# Checks the packages dist/packages.sh made: `dist/release.sh && dist/packages.sh &&
# dist/test-packages.sh`, as root on a Debian machine that has no exec-allinone installed (CI
# runs it). The .deb is installed with dpkg, checked (the user, the directories, the example
# config, check-config as the service user, systemd-analyze verify of the installed unit for
# every role, nothing started or enabled, the drop-in by dist/test-dropin.sh), removed (data and
# config stay, the binary goes) and purged. The .rpm is inspected with rpm (its file list,
# digests, scripts and requirements), not installed. Does not need systemd as PID 1. Installs
# rpm and systemd (for systemd-analyze) with apt when missing. Leaves the machine as it found it:
# the package, the user and the directories it made are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
deb=target/dist/exec-allinone_${version}-1_amd64.deb
rpm=target/dist/exec-allinone-${version}-1.x86_64.rpm
bin=target/dist/exec-allinone
roles="webdav lb excp exrp all"
marker=.made-by-test-packages

fail() { echo "test-packages.sh: FAILED: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
# MODE OWNER:GROUP PATH: PATH has that mode (octal) and owner.
has_stat() {
  local got
  got=$(stat -c '%a %U:%G' "$3" 2>/dev/null) || fail "$3 is missing"
  [ "$got" = "$1 $2" ] || fail "$3 is $got, not $1 $2"
}
# STATE: dpkg knows exec-allinone in that state (installed, config-files, not-installed).
installed() {
  local s
  s=$(dpkg-query -W -f='${db:Status-Status}' exec-allinone 2>/dev/null) || s=not-installed
  [ "${s:-not-installed}" = "$1" ]
}

[ "$(id -u)" = 0 ] || fail "needs root (it installs the .deb)"
for f in "$bin" "$deb" "$rpm"; do
  [ -f "$f" ] || fail "$f is missing: run dist/release.sh && dist/packages.sh first"
done
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}
command -v rpm >/dev/null || apt_install rpm
command -v systemd-analyze >/dev/null || apt_install systemd
command -v curl >/dev/null || apt_install curl

# This machine must not have exec-allinone already (this test installs and removes it); what an
# earlier, interrupted run left (it carries the marker) is cleared.
if [ -e /var/lib/exec-allinone/$marker ]; then
  echo "clearing what an interrupted run of test-packages.sh left"
  dpkg -P exec-allinone >/dev/null 2>&1 || true
  rm -rf /etc/exec-allinone /var/lib/exec-allinone
  userdel exec-allinone 2>/dev/null || true
  groupdel exec-allinone 2>/dev/null || true
fi
installed not-installed ||
  fail "dpkg knows exec-allinone on this machine already; this test installs and purges it: run it elsewhere"
for p in /usr/bin/exec-allinone /etc/exec-allinone /var/lib/exec-allinone; do
  [ ! -e "$p" ] || fail "$p exists already; this test installs the package and removes it again: run it on a machine without exec-allinone"
done
! getent passwd exec-allinone >/dev/null || fail "the user exec-allinone exists already; run this on a machine without exec-allinone"
! getent group exec-allinone >/dev/null || fail "the group exec-allinone exists already; run this on a machine without exec-allinone"

tmp=$(mktemp -d)
cleanup() {
  dpkg -P exec-allinone >/dev/null 2>&1 || true
  rm -rf /etc/exec-allinone /var/lib/exec-allinone "$tmp"
  userdel exec-allinone 2>/dev/null || true
  groupdel exec-allinone 2>/dev/null || true
}
trap cleanup EXIT

echo "== the .deb: $deb"
dpkg -i "$deb" >"$tmp/dpkg-i.log" 2>&1 || { cat "$tmp/dpkg-i.log" >&2; fail "dpkg -i $deb"; }
touch /var/lib/exec-allinone/$marker
installed installed || fail "dpkg -i left exec-allinone not installed"
ok "dpkg -i $deb"

# The user and group.
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd exec-allinone) ||
  fail "the package created no user exec-allinone"
getent group exec-allinone >/dev/null || fail "the package created no group exec-allinone"
[ "$(getent group exec-allinone | cut -d: -f3)" = "$gid" ] || fail "exec-allinone's primary group is not exec-allinone"
[ "$uid" -lt 1000 ] || fail "exec-allinone has uid $uid, not a system uid"
[ "$home" = /var/lib/exec-allinone ] || fail "exec-allinone's home is $home, not /var/lib/exec-allinone"
[ "$shell" = /usr/sbin/nologin ] || fail "exec-allinone's shell is $shell, not /usr/sbin/nologin"
ok "system user and group exec-allinone (uid $uid, home $home, shell $shell)"

# The files and directories.
has_stat 750 exec-allinone:exec-allinone /var/lib/exec-allinone
has_stat 750 root:exec-allinone /etc/exec-allinone
has_stat 644 root:root /etc/exec-allinone/example.toml
cmp -s config/example.toml /etc/exec-allinone/example.toml || fail "/etc/exec-allinone/example.toml is not config/example.toml"
dpkg-query -W -f='${Conffiles}\n' exec-allinone | grep -q '^ /etc/exec-allinone/example.toml ' ||
  fail "/etc/exec-allinone/example.toml is not a conffile"
has_stat 755 root:root /usr/bin/exec-allinone
cmp -s "$bin" /usr/bin/exec-allinone || fail "/usr/bin/exec-allinone is not $bin (the glibc 2.28 build)"
has_stat 644 root:root /lib/systemd/system/exec-allinone@.service
cmp -s systemd/exec-allinone@.service /lib/systemd/system/exec-allinone@.service ||
  fail "/lib/systemd/system/exec-allinone@.service is not systemd/exec-allinone@.service"
cmp -s README.md /usr/share/doc/exec-allinone/README.md || fail "/usr/share/doc/exec-allinone/README.md is not README.md"
cmp -s systemd/recordings-outside-var-lib.conf /usr/share/doc/exec-allinone/examples/recordings-outside-var-lib.conf ||
  fail "/usr/share/doc/exec-allinone/examples/recordings-outside-var-lib.conf is not systemd/recordings-outside-var-lib.conf"
ok "/var/lib/exec-allinone (exec-allinone, 0750), /etc/exec-allinone (root:exec-allinone, 0750) with example.toml (a conffile), /usr/bin/exec-allinone, /lib/systemd/system/exec-allinone@.service, the docs"

# check-config as the unit's ExecStartPre runs it: as exec-allinone, which must be able to read
# /etc/exec-allinone. The example is a whole site; lb, excp and exrp validate on their own.
as_user() { setpriv --reuid exec-allinone --regid exec-allinone --init-groups "$@"; }
for role in lb excp exrp; do
  as_user exec-allinone check-config --config /etc/exec-allinone/example.toml --role "$role" >"$tmp/cc.log" 2>&1 ||
    { cat "$tmp/cc.log" >&2; fail "check-config of example.toml for --role $role as exec-allinone"; }
done
ok "check-config --config /etc/exec-allinone/example.toml passes for lb, excp, exrp (as exec-allinone)"
# webdav needs its password file, which the example names but no package can ship: refused
# (78) by name. With it, the README's smallest webdav site passes.
rc=0
as_user exec-allinone check-config --config /etc/exec-allinone/example.toml --role webdav >"$tmp/cc.log" 2>&1 || rc=$?
[ "$rc" = 78 ] || { cat "$tmp/cc.log" >&2; fail "check-config of example.toml for webdav exited $rc, not 78"; }
grep -q 'webdav.htpasswd: cannot read /etc/exec-allinone/htpasswd' "$tmp/cc.log" ||
  { cat "$tmp/cc.log" >&2; fail "check-config of example.toml for webdav does not name the missing /etc/exec-allinone/htpasswd"; }
echo "secret" | exec-allinone htpasswd -c -i /etc/exec-allinone/htpasswd mcp 2>/dev/null
chown root:exec-allinone /etc/exec-allinone/htpasswd && chmod 0640 /etc/exec-allinone/htpasswd
cat >/etc/exec-allinone/webdav.toml <<'EOF'
[webdav]
listen = "0.0.0.0:80"
root = "/var/lib/exec-allinone/recordings"
htpasswd = "/etc/exec-allinone/htpasswd"
quota = "30GiB"
EOF
as_user exec-allinone check-config --config /etc/exec-allinone/webdav.toml --role webdav >"$tmp/cc.log" 2>&1 ||
  { cat "$tmp/cc.log" >&2; fail "check-config of the smallest webdav site as exec-allinone"; }
ok "check-config: webdav from example.toml is refused (78) naming /etc/exec-allinone/htpasswd; with it, the smallest webdav site passes"

# The installed unit, verified by name for every role (systemd-analyze loads it from
# /lib/systemd/system, where the package put it, with /usr/bin/exec-allinone where ExecStart points).
units=()
for role in $roles; do units+=("exec-allinone@$role.service"); done
out=$(systemd-analyze verify "${units[@]}" 2>&1) || fail "systemd-analyze verify ${units[*]}: $out"
[ -z "$out" ] || fail "systemd-analyze verify ${units[*]}: $out"
ok "systemd-analyze verify of the installed unit for $roles: clean"

# Nothing started, nothing enabled. (Other exec-allinone processes may run on a shared machine,
# from a build tree: only the installed binary and the package's user count.)
for exe in /proc/[0-9]*/exe; do
  if [ "$(readlink "$exe" 2>/dev/null)" = /usr/bin/exec-allinone ]; then
    fail "a process runs /usr/bin/exec-allinone after installing: ${exe%/exe}"
  fi
done
! pgrep -u exec-allinone >/dev/null || fail "processes run as exec-allinone after installing: $(pgrep -u exec-allinone | tr '\n' ' ')"
enabled=$(find /etc/systemd/system -name 'exec-allinone*' 2>/dev/null)
[ -z "$enabled" ] || fail "installing enabled units: $enabled"
! grep -qi 'created symlink' "$tmp/dpkg-i.log" || fail "dpkg -i enabled a unit: $(cat "$tmp/dpkg-i.log")"
ok "installing started nothing (no process runs /usr/bin/exec-allinone or as exec-allinone) and enabled nothing (nothing in /etc/systemd/system)"

# The drop-in for a store outside /var/lib/exec-allinone, with the package installed.
dist/test-dropin.sh || fail "dist/test-dropin.sh"

# Installing again (as an upgrade does) keeps the operator's edits: the edited conffile and the
# mode given to /etc/exec-allinone; the postinst copes with the user being there.
echo "# edited by test-packages.sh" >>/etc/exec-allinone/example.toml
chmod 0710 /etc/exec-allinone
mkdir -p /var/lib/exec-allinone/recordings
echo recording >/var/lib/exec-allinone/recordings/C1_a.opus
dpkg -i "$deb" >"$tmp/dpkg-i2.log" 2>&1 || { cat "$tmp/dpkg-i2.log" >&2; fail "dpkg -i $deb over itself"; }
grep -q '^# edited by test-packages.sh$' /etc/exec-allinone/example.toml ||
  fail "installing again replaced the edited /etc/exec-allinone/example.toml"
has_stat 710 root:exec-allinone /etc/exec-allinone
has_stat 750 exec-allinone:exec-allinone /var/lib/exec-allinone
[ -f /var/lib/exec-allinone/recordings/C1_a.opus ] || fail "installing again removed a recording"
chmod 0750 /etc/exec-allinone
ok "dpkg -i over the installed package keeps the edited example.toml, the mode of /etc/exec-allinone and the recordings"

# Remove: the binary and the unit go; data, config and the user stay.
dpkg -r exec-allinone >"$tmp/dpkg-r.log" 2>&1 || { cat "$tmp/dpkg-r.log" >&2; fail "dpkg -r exec-allinone"; }
installed config-files || fail "after dpkg -r exec-allinone is not in state config-files"
[ ! -e /usr/bin/exec-allinone ] || fail "dpkg -r left /usr/bin/exec-allinone"
[ ! -e /lib/systemd/system/exec-allinone@.service ] || fail "dpkg -r left the unit"
grep -q '^# edited by test-packages.sh$' /etc/exec-allinone/example.toml 2>/dev/null ||
  fail "dpkg -r removed or replaced the edited /etc/exec-allinone/example.toml"
for f in /etc/exec-allinone/webdav.toml /etc/exec-allinone/htpasswd /var/lib/exec-allinone/recordings/C1_a.opus; do
  [ -f "$f" ] || fail "dpkg -r removed $f"
done
has_stat 750 exec-allinone:exec-allinone /var/lib/exec-allinone
getent passwd exec-allinone >/dev/null || fail "dpkg -r removed the user exec-allinone"
ok "dpkg -r: the binary and the unit are gone; the edited example.toml, the operator's files in /etc/exec-allinone, /var/lib/exec-allinone with its recordings, and the user stay"

# Purge: dpkg removes the conffile example.toml; the rest stays (README.md, "Installing on VMs").
dpkg -P exec-allinone >"$tmp/dpkg-p.log" 2>&1 || { cat "$tmp/dpkg-p.log" >&2; fail "dpkg -P exec-allinone"; }
installed not-installed || fail "after dpkg -P exec-allinone is still known to dpkg"
[ ! -e /etc/exec-allinone/example.toml ] || fail "dpkg -P left /etc/exec-allinone/example.toml"
for f in /etc/exec-allinone/webdav.toml /etc/exec-allinone/htpasswd /var/lib/exec-allinone/recordings/C1_a.opus; do
  [ -f "$f" ] || fail "dpkg -P removed $f"
done
getent passwd exec-allinone >/dev/null || fail "dpkg -P removed the user exec-allinone"
ok "dpkg -P: example.toml is gone; the operator's files, /var/lib/exec-allinone and the user stay"

echo "== the .rpm: $rpm"
rpm -K --nosignature "$rpm" >/dev/null || fail "rpm -K: the rpm's digests do not check"
sha() { sha256sum "$1" | cut -d' ' -f1; }
# FILEFLAGS: c = config, n = noreplace, d = doc.
expected="$(sha config/example.toml) cn 0644 root:root /etc/exec-allinone/example.toml
$(sha "$bin")  0755 root:root /usr/bin/exec-allinone
$(sha systemd/exec-allinone@.service)  0644 root:root /usr/lib/systemd/system/exec-allinone@.service
$(sha README.md) d 0644 root:root /usr/share/doc/exec-allinone/README.md
$(sha systemd/recordings-outside-var-lib.conf) d 0644 root:root /usr/share/doc/exec-allinone/examples/recordings-outside-var-lib.conf"
got=$(rpm -qp --qf '[%{FILEDIGESTS} %{FILEFLAGS:fflags} %{FILEMODES:octal} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm" |
  sed 's/ 10\([0-7][0-7][0-7][0-7]\) / \1 /' | LC_ALL=C sort -t' ' -k5)
[ "$got" = "$expected" ] || fail "the rpm's files (digest, flags, mode, owner, path) differ:
$(diff <(echo "$expected") <(echo "$got"))"
[ "$(rpm -qp --qf '%{FILEDIGESTALGO}' "$rpm")" = 8 ] || fail "the rpm's file digests are not SHA-256"
ok "rpm -qlp: the glibc 2.28 binary at /usr/bin, the unit at /usr/lib/systemd/system, example.toml as %config(noreplace), the docs"
scripts=$(rpm -qp --scripts "$rpm")
for want in "preinstall scriptlet" "useradd -r -g exec-allinone -d /var/lib/exec-allinone" "getent passwd exec-allinone" \
  "postinstall scriptlet" "install -d -o exec-allinone -g exec-allinone -m 0750 /var/lib/exec-allinone" \
  "chown root:exec-allinone /etc/exec-allinone" "preuninstall scriptlet" "postuninstall scriptlet"; do
  grep -qF "$want" <<<"$scripts" || fail "rpm -qp --scripts has no '$want':
$scripts"
done
! grep -Eq 'systemctl (enable|start|restart|preset)' <<<"$scripts" || fail "the rpm's scripts enable or start units"
! grep -Eq 'rm -r|userdel|groupdel' <<<"$scripts" || fail "the rpm's scripts delete data or the user"
for tag in PREIN POSTIN PREUN POSTUN; do
  sh -n <(rpm -qp --qf "%{$tag}" "$rpm") || fail "the rpm's %{$tag} scriptlet does not parse"
done
ok "rpm -qp --scripts: %pre creates the user (getent, useradd -r), %post the directories; nothing is enabled, started or deleted"
requires=$(rpm -qp --requires "$rpm")
grep -qx 'glibc >= 2.28' <<<"$requires" || fail "the rpm does not require glibc >= 2.28: $requires"
! grep -q 'GLIBC_2\.\(29\|[3-9][0-9]\)' <<<"$requires" || fail "the rpm requires a glibc newer than 2.28: $requires"
ok "rpm requires: $(sort -u <<<"$requires" | tr '\n' ' ')"
echo "test-packages.sh: all checks passed"
