#!/usr/bin/env bash
# Tests systemd/recordings-outside-var-lib.conf, the drop-in for a WebDAV store outside
# /var/lib/exec-allinone (README.md, "Moving over from Apache"). Needs root and the package
# installed (/usr/bin/exec-allinone, /lib/systemd/system/exec-allinone@.service, the user
# exec-allinone): dist/test-packages.sh calls it between `dpkg -i` and `dpkg -r`; by hand,
# `dpkg -i target/dist/exec-allinone_*.deb && dist/test-dropin.sh`.
#  1. `systemd-analyze verify` of exec-allinone@webdav.service: the installed template with the
#     drop-in in an exec-allinone@webdav.service.d/ put first on the unit path, and a canary
#     that proves the drop-in is read: the same drop-in with a misspelt key must be reported.
#  2. ProtectSystem=strict with and without the drop-in. This machine has no systemd as PID 1
#     (so no systemd-run), so the sandbox is emulated in a private mount namespace (unshare):
#     every mount read-only except /proc, /sys and /dev, a private /tmp and /var/tmp, and the
#     unit's writable paths: /var/lib/exec-allinone (StateDirectory=), plus /mnt/recordings only
#     with the drop-in. /mnt/recordings is a temp directory bound there inside the namespace (a
#     tmpfs over /mnt, so the host's /mnt is untouched). The webdav role runs in it as
#     exec-allinone (setpriv: no new privileges, UMask=0027) with root = "/mnt/recordings".
#     With the drop-in a PUT answers 201 and the file lands on disk. Without it the role refuses
#     to start (exit status not 0, no READY line) and says the store root is on a read-only file
#     system and names ReadWritePaths= and the drop-in.
set -euo pipefail

self=$(readlink -f "$0")
unit=/lib/systemd/system/exec-allinone@.service
dropin=$(dirname "$self")/../systemd/recordings-outside-var-lib.conf
cfg=/etc/exec-allinone/test-dropin.toml
pwfile=/etc/exec-allinone/test-dropin.htpasswd

fail() { echo "test-dropin.sh: FAILED: $*" >&2; exit 1; }

# Inside the namespace (`test-dropin.sh --inside dropin|none`, run by unshare below): builds the
# sandbox the unit would get, checks it, then becomes the webdav role.
if [ "${1:-}" = --inside ]; then
  mode=$2 store=$3
  say() { echo "sandbox($mode): $*" >&2; }
  # The store's own mount, as the vendor guide's /mnt/recordings is one.
  mount -t tmpfs -o mode=0755 tmpfs /mnt
  mkdir /mnt/recordings
  mount --bind "$store" /mnt/recordings
  # PrivateTmp=yes.
  mount -t tmpfs -o mode=1777 tmpfs /tmp
  mount -t tmpfs -o mode=1777 tmpfs /var/tmp
  # StateDirectory=exec-allinone: writable, as its own mount.
  mount --bind /var/lib/exec-allinone /var/lib/exec-allinone
  writable=(/tmp /var/tmp /var/lib/exec-allinone)
  [ "$mode" = dropin ] && writable+=(/mnt/recordings)
  # ProtectSystem=strict: every other mount read-only, /proc /sys /dev left to their own
  # settings (ProtectKernelTunables=, PrivateDevices=). Mounts hidden under another are skipped.
  while read -r mp; do
    case "$mp" in /proc | /proc/* | /sys | /sys/* | /dev | /dev/*) continue ;; esac
    for w in "${writable[@]}"; do [ "$mp" = "$w" ] && continue 2; done
    mountpoint -q "$mp" 2>/dev/null || continue
    mount -o remount,bind,ro "$mp" || { say "cannot make $mp read-only"; exit 1; }
  done < <(awk '{print $5}' /proc/self/mountinfo | sort -u)
  # The sandbox as it is: root (whom only a read-only mount stops) cannot write to /etc, the
  # service user can write to its state directory, and to the store only with the drop-in.
  as_user=(setpriv --reuid exec-allinone --regid exec-allinone --init-groups --no-new-privs)
  if touch /etc/.test-dropin-probe 2>/dev/null; then
    rm -f /etc/.test-dropin-probe; say "/etc is writable: the emulation is broken"; exit 1
  fi
  "${as_user[@]}" touch /var/lib/exec-allinone/.probe || { say "/var/lib/exec-allinone is not writable"; exit 1; }
  rm -f /var/lib/exec-allinone/.probe
  if "${as_user[@]}" touch /mnt/recordings/.probe 2>/dev/null; then
    rm -f /mnt/recordings/.probe
    [ "$mode" = dropin ] || { say "/mnt/recordings is writable without the drop-in"; exit 1; }
    say "/ read-only; writable: ${writable[*]}"
  else
    [ "$mode" = none ] || { say "/mnt/recordings is not writable with the drop-in"; exit 1; }
    say "/ read-only, /mnt/recordings too; writable: ${writable[*]}"
  fi
  cd /var/lib/exec-allinone
  umask 0027
  exec "${as_user[@]}" --inh-caps=-all --bounding-set=-all,+net_bind_service \
    /usr/bin/exec-allinone --role webdav --config "$cfg"
fi

[ "$(id -u)" = 0 ] || fail "needs root (mount namespaces, the user exec-allinone)"
[ -x /usr/bin/exec-allinone ] || fail "/usr/bin/exec-allinone is missing: install the .deb first"
[ -f "$unit" ] || fail "$unit is missing: install the .deb first"
getent passwd exec-allinone >/dev/null || fail "no user exec-allinone: install the .deb first"
[ -f "$dropin" ] || fail "$dropin is missing"
for tool in systemd-analyze unshare setpriv curl mountpoint; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done

tmp=$(mktemp -d)
pid=
stop_server() {
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}
cleanup() {
  stop_server
  rm -rf "$tmp"
  rm -f "$cfg" "$pwfile"
}
trap cleanup EXIT

# 1. systemd-analyze verify, with the drop-in read. SYSTEMD_UNIT_PATH="DIR:" puts DIR before the
# usual unit directories, so DIR plays /etc/systemd/system: it holds only the drop-in directory,
# and the template comes from where the package installed it, as on a VM.
verify() { # DIR: verify exec-allinone@webdav.service; prints what systemd-analyze says
  SYSTEMD_UNIT_PATH="$1:" systemd-analyze verify exec-allinone@webdav.service 2>&1 || true
}
mkdir -p "$tmp/units/exec-allinone@webdav.service.d" "$tmp/canary/exec-allinone@webdav.service.d"
sed 's/^ReadWritePaths=/ReadWritePathz=/' "$dropin" \
  >"$tmp/canary/exec-allinone@webdav.service.d/recordings-outside-var-lib.conf"
out=$(verify "$tmp/canary")
grep -q "recordings-outside-var-lib.conf:.*ReadWritePathz" <<<"$out" ||
  fail "systemd-analyze verify did not read the drop-in (a misspelt key in it went unreported): $out"
echo "ok: systemd-analyze reads the drop-in (a misspelt key in it is reported)"
cp "$dropin" "$tmp/units/exec-allinone@webdav.service.d/"
out=$(verify "$tmp/units")
[ -z "$out" ] || fail "systemd-analyze verify of exec-allinone@webdav with the drop-in: $out"
echo "ok: systemd-analyze verify exec-allinone@webdav.service ($unit + the drop-in): clean"

# 2. The webdav role in the emulated sandbox.
password="dropin-test"
echo "$password" | exec-allinone htpasswd -c -m -i "$pwfile" mcp 2>/dev/null ||
  fail "cannot write $pwfile"
chown root:exec-allinone "$pwfile" && chmod 0640 "$pwfile"
cat >"$cfg" <<EOF
[admin]
listen = "127.0.0.1:0"

[webdav]
listen = "127.0.0.1:0"
root = "/mnt/recordings"
htpasswd = "$pwfile"
EOF
chown root:exec-allinone "$cfg" && chmod 0640 "$cfg"
head -c 100000 /dev/urandom >"$tmp/call.opus"

start_webdav() { # dropin|none: starts the role in the sandbox; sets pid and addr
  local mode=$1
  rm -rf "$tmp/store" && mkdir "$tmp/store" && chown exec-allinone:exec-allinone "$tmp/store"
  unshare --mount --propagation private -- "$self" --inside "$mode" "$tmp/store" \
    >"$tmp/$mode.out" 2>"$tmp/$mode.err" &
  pid=$!
  addr=
  for _ in $(seq 200); do
    addr=$(sed -n 's/^READY .*webdav=\([^ ]*\).*/\1/p' "$tmp/$mode.out")
    [ -n "$addr" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "--- stderr:" >&2; cat "$tmp/$mode.err" >&2
  fail "webdav ($mode) printed no READY line within 20 s"
}
put() { # URL-PATH: PUT call.opus there, print the status
  curl -sS -o "$tmp/put.body" -w '%{http_code}' --max-time 20 -u "mcp:$password" \
    -T "$tmp/call.opus" "http://$addr/recordings/$1"
}

start_webdav dropin
code=$(put C1_a.opus) || fail "PUT with the drop-in: curl failed"
[ "$code" = 201 ] || { cat "$tmp/dropin.err" >&2; fail "PUT with the drop-in answered $code, not 201"; }
cmp -s "$tmp/call.opus" "$tmp/store/C1_a.opus" ||
  fail "PUT with the drop-in answered 201 but $tmp/store/C1_a.opus does not hold the upload"
owner=$(stat -c %U:%G "$tmp/store/C1_a.opus")
[ "$owner" = exec-allinone:exec-allinone ] || fail "the recording is owned by $owner, not exec-allinone"
stop_server
echo "ok: with the drop-in a PUT into /mnt/recordings answers 201 and lands on disk ($owner)"

# Without the drop-in the store root is read-only: the role must refuse to start and say why
# (a role that started would answer every PUT 403 while /health said UP).
rm -rf "$tmp/store" && mkdir "$tmp/store" && chown exec-allinone:exec-allinone "$tmp/store"
status=0
timeout 30 unshare --mount --propagation private -- "$self" --inside none "$tmp/store" \
  >"$tmp/none.out" 2>"$tmp/none.err" || status=$?
[ "$status" != 0 ] || fail "webdav without the drop-in started and exited 0: $(cat "$tmp/none.err")"
[ "$status" != 124 ] || fail "webdav without the drop-in still ran after 30 s (it should refuse to start)"
! grep -q '^READY' "$tmp/none.out" || fail "webdav without the drop-in printed READY"
grep -q 'read-only file system.*ReadWritePaths=.*recordings-outside-var-lib.conf' "$tmp/none.err" ||
  fail "webdav without the drop-in did not say why (read-only, ReadWritePaths=, the drop-in): $(cat "$tmp/none.err")"
echo "ok: without the drop-in webdav refuses to start (exit $status): $(grep -o 'cannot write in the store root.*' "$tmp/none.err" | head -1 | cut -c1-160)"
echo "test-dropin.sh: all checks passed"
