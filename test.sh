#!/usr/bin/env bash
# The test command: installs the real peers the tests run when they are missing (Debian
# packages, as root), then runs the whole suite. Without root or apt it stops before testing
# and names the packages. Arguments go to `cargo test` (a filter, `-- --nocapture`).
#
# The peers and what each is for:
#   litmus           WebDAV compliance suite, run against the webdav role
#   apache2          Apache httpd with mod_dav: the store exrp's WebDAV client must also work with
#   apache2-utils    Apache's htpasswd: password files made by it, and ours checked by it
#   curl, openssl    a real HTTP client, and certificates for the TLS tests
#   nginx            the load balancer's parity target (Debian's 1.22.1)
#   chromium, chromium-driver   the status page in a real browser, headless
#   util-linux       unshare: the sandbox tests' own network namespace (their fixed ports)
#   python3-prometheus-client   Prometheus's own text-format parser, reading /metrics
#   prometheus       its promtool checks and evaluates the alerting rules (dist/prometheus/)
#   garage           the S3-compatible store the S3 client is tested against (a 3-node cluster
#                    on loopback): not a Debian package, so `cargo install garage --locked`
#                    (about 10 minutes the first time; AGPL, run as its own process, never linked)
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v litmus >/dev/null || need+=(litmus)
command -v htpasswd >/dev/null || need+=(apache2-utils)
[ -x /usr/sbin/apache2 ] || need+=(apache2)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v unshare >/dev/null || need+=(util-linux)
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "the tests need these packages, not installed here: ${need[*]} (as root: apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ] && ! [ -x /usr/local/bin/garage ]; then
  echo "installing garage (cargo install garage --locked; about 10 minutes)"
  cargo install garage --locked --quiet
fi
# A thousand concurrent uploads need a thousand sockets on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo test --locked "$@"
