#!/usr/bin/env python3
"""Hostile-load figures for issue 17, against the release binary (and nginx for the lb):

  1. lb RSS while 1000 connections each trickle a 1 MiB POST body (exec-allinone and nginx
     1.22 side by side, same backend, same limits);
  2. a cached recorder's p50/p99 on the webdav role while 1000 connections send bad passwords
     (and without them, for the ratio);
  3. the time for 100 simultaneous first logins of one bcrypt user, and the hashes computed;
  4. the webdav role's RSS at the lock bound (max_locks locks with max_lock_owner_bytes owners,
     then a PROPFIND).

    bench/hostile.py [--quick] [--out FILE]

Everything runs on 127.0.0.1; processes are stopped on exit. Figures are medians where a
figure is repeated; these machines are noisy, so read ratios, not absolutes.
"""
import argparse
import asyncio
import base64
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("EXEC_BIN", os.path.join(ROOT, "target", "release", "exec-allinone"))
PROCS = []


def log(msg):
    print(time.strftime("[%H:%M:%S] ") + msg, file=sys.stderr, flush=True)


def start(args, work, name):
    """Starts the binary and returns (process, {listener: (host, port)}) from its READY line."""
    err = open(os.path.join(work, name + ".log"), "w")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    PROCS.append(p)
    line = p.stdout.readline()
    if not line.startswith("READY"):
        sys.exit(f"{name} did not start: {open(os.path.join(work, name + '.log')).read()}")
    addrs = {}
    for item in line.split()[1:]:
        k, v = item.split("=", 1)
        host, port = v.rsplit(":", 1)
        addrs[k] = (host, int(port))
    return p, addrs


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
                total += int(m.group(1)) if m else 0
        except FileNotFoundError:
            pass
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------------ 1. lb trickle


async def trickle(host, port, size, seconds, stop):
    """One client: a POST announcing `size` bytes, sent in pieces over `seconds`."""
    try:
        r, w = await asyncio.open_connection(host, port)
    except OSError:
        return "connect failed"
    w.write(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
    piece = 64 << 10
    steps = size // piece
    for _ in range(steps):
        if stop.is_set():
            break
        w.write(b"t" * piece)
        try:
            await w.drain()
        except OSError:
            return "reset"
        await asyncio.sleep(seconds / steps)
    w.close()
    return "done"


async def trickle_run(host, port, conns, size, seconds, pids):
    stop = asyncio.Event()
    tasks = [asyncio.create_task(trickle(host, port, size, seconds, stop)) for _ in range(conns)]
    peak = 0
    t0 = time.time()
    while time.time() - t0 < seconds + 1:
        peak = max(peak, rss_kib(pids()))
        await asyncio.sleep(0.25)
    stop.set()
    results = await asyncio.gather(*tasks)
    return peak, {r: results.count(r) for r in set(results)}


def bench_lb(work, conns, seconds):
    backend_port = free_port()
    nginx_dir = os.path.join(work, "nginx")
    os.makedirs(nginx_dir)
    nginx_port = free_port()
    # nginx 1.22 as the incumbent: the vendor's upstream, the same body limits.
    conf = f"""worker_processes 2;
pid {nginx_dir}/nginx.pid;
error_log {nginx_dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {nginx_dir}/body;
  proxy_temp_path {nginx_dir}/proxy;
  client_max_body_size 2m;
  client_body_timeout 120s;
  upstream u {{ server 127.0.0.1:{backend_port} max_fails=0; }}
  server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://u; }} }}
  server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200; }} }}
}}
"""
    with open(os.path.join(nginx_dir, "nginx.conf"), "w") as f:
        f.write(conf)
    ng = subprocess.Popen(["nginx", "-p", nginx_dir, "-c", os.path.join(nginx_dir, "nginx.conf"), "-g", "daemon off;"],
                          stderr=subprocess.DEVNULL)
    PROCS.append(ng)
    time.sleep(1)
    cfg = os.path.join(work, "lb.toml")
    with open(cfg, "w") as f:
        f.write(f"""[admin]
listen = "127.0.0.1:0"
[lb]
workers = 2
max_body_size = "2MiB"
body_timeout = "120s"
client_body_temp_path = "{work}"
[lb.pools.p]
listen = "127.0.0.1:0"
servers = ["127.0.0.1:{backend_port}"]
""")
    lb, addrs = start([BIN, "--role", "lb", "--config", cfg], work, "lb")
    out = {}
    for name, (host, port), pids in [
        ("exec-allinone", addrs["lb.p"], lambda: [lb.pid]),
        # nginx's own backend server block runs in the same workers; its memory is counted too.
        ("nginx", ("127.0.0.1", nginx_port), lambda: [ng.pid] + children(ng.pid)),
    ]:
        idle = rss_kib(pids())
        peak, results = asyncio.run(trickle_run(host, port, conns, 1 << 20, seconds, pids))
        log(f"lb {name}: idle {idle} KiB, peak {peak} KiB under {conns} trickling 1 MiB bodies ({results})")
        out[name] = (idle, peak)
    return out


# ------------------------------------------------------------------------ 2-4. webdav


def webdav_site(work, name, extra=""):
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "root"))
    pw = os.path.join(d, "htpasswd")
    subprocess.run([BIN, "htpasswd", "-c", "-C", "10", pw, "mcp", "recorder-pw"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = os.path.join(d, "config.toml")
    with open(cfg, "w") as f:
        f.write(f"""[admin]
listen = "127.0.0.1:0"
[webdav]
listen = "127.0.0.1:0"
root = "{d}/root"
htpasswd = "{pw}"
{extra}
""")
    return start([BIN, "--role", "webdav", "--config", cfg], work, name)


def auth(user, pw):
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


async def request(host, port, head, body=b""):
    r, w = await asyncio.open_connection(host, port)
    w.write(head.encode() + body)
    await w.drain()
    status = await r.readline()
    # Read the head and a Content-Length body.
    length = 0
    while True:
        line = await r.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await r.readexactly(length)
    w.close()
    return int(status.split()[1])


async def attacker(host, port, stop):
    while not stop.is_set():
        try:
            await request(host, port, f"PROPFIND /recordings/ HTTP/1.1\r\nHost: x\r\nDepth: 0\r\n"
                                      f"Authorization: {auth('mcp', os.urandom(6).hex())}\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            await asyncio.sleep(0.05)


async def recorder(host, port, n):
    lat = []
    head = (f"PROPFIND /recordings/ HTTP/1.1\r\nHost: x\r\nDepth: 0\r\n"
            f"Authorization: {auth('mcp', 'recorder-pw')}\r\nContent-Length: 0\r\n\r\n")
    for _ in range(n):
        t = time.perf_counter()
        status = await request(host, port, head)
        assert status == 207, status
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


async def under_attack(host, port, attackers, n):
    await recorder(host, port, 1)  # cached from here on
    base = await recorder(host, port, n)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(attacker(host, port, stop)) for _ in range(attackers)]
    await asyncio.sleep(2)
    attacked = await recorder(host, port, n)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return base, attacked


def metric(addrs, name):
    import urllib.request
    host, port = addrs["admin"]
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics").read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


async def first_logins(host, port, n):
    head = (f"PROPFIND /recordings/ HTTP/1.1\r\nHost: x\r\nDepth: 0\r\n"
            f"Authorization: {auth('mcp', 'recorder-pw')}\r\nContent-Length: 0\r\n\r\n")
    t = time.perf_counter()
    statuses = await asyncio.gather(*[request(host, port, head) for _ in range(n)])
    assert all(s == 207 for s in statuses), statuses
    return time.perf_counter() - t


async def fill_locks(host, port, n, owner_bytes):
    owner = "o" * (owner_bytes - len("<D:owner></D:owner>") - 40)
    body = (f'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            f"<D:locktype><D:write/></D:locktype><D:owner>{owner}</D:owner></D:lockinfo>").encode()
    sem = asyncio.Semaphore(64)
    statuses = []

    async def one(i):
        async with sem:
            statuses.append(await request(host, port, f"LOCK /recordings/l{i} HTTP/1.1\r\nHost: x\r\n"
                                                      f"Authorization: {auth('mcp', 'recorder-pw')}\r\n"
                                                      f"Content-Length: {len(body)}\r\n\r\n", body))
    await asyncio.gather(*[one(i) for i in range(n + 1)])
    return {s: statuses.count(s) for s in set(statuses)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        sys.exit("nginx is needed (apt-get install nginx)")
    os.environ["PATH"] += ":/usr/sbin"
    if not os.environ.get("EXEC_BIN"):
        log("cargo build --release")
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = 200 if a.quick else 1000
    work = tempfile.mkdtemp(prefix="hostile-bench.")
    lines = []
    try:
        lb = bench_lb(work, conns, 6 if a.quick else 12)
        e, n = lb["exec-allinone"], lb["nginx"]
        lines.append(f"| lb peak RSS, {conns} trickling 1 MiB POSTs | {e[1] / 1024:.1f} MiB "
                     f"(idle {e[0] / 1024:.1f}) | nginx {n[1] / 1024:.1f} MiB (idle {n[0] / 1024:.1f}) "
                     f"| {e[1] / max(n[1], 1):.2f} |")

        _, addrs = webdav_site(work, "auth")
        host, port = addrs["webdav"]
        (b50, b99), (a50, a99) = asyncio.run(under_attack(host, port, conns, 100 if a.quick else 300))
        log(f"cached recorder: p50 {b50 * 1e3:.2f} ms p99 {b99 * 1e3:.2f} ms alone; "
            f"p50 {a50 * 1e3:.2f} ms p99 {a99 * 1e3:.2f} ms under {conns} bad-password connections")
        lines.append(f"| cached recorder p99 under {conns} bad-password connections | {a99 * 1e3:.1f} ms "
                     f"(p50 {a50 * 1e3:.1f}) | alone {b99 * 1e3:.1f} ms (p50 {b50 * 1e3:.1f}) | {a99 / b99:.2f} |")
        slowed = metric(addrs, "webdav_auth_slowed_total")
        hashes = metric(addrs, "webdav_auth_hashes_total")
        lines.append(f"| bad-password checks slowed before hashing / hashes computed | {slowed:.0f} / {hashes:.0f} | | |")

        _, addrs = webdav_site(work, "first")
        host, port = addrs["webdav"]
        took = asyncio.run(first_logins(host, port, 100))
        hashes = metric(addrs, "webdav_auth_hashes_total")
        lines.append(f"| 100 simultaneous first logins of one bcrypt (cost 10) user | {took * 1e3:.0f} ms, "
                     f"{hashes:.0f} hash | | |")

        locks = 2000 if a.quick else 10000
        p, addrs = webdav_site(work, "locks", f"max_locks = {locks}\nmax_lock_owner_bytes = 1024")
        host, port = addrs["webdav"]
        idle = rss_kib([p.pid])
        statuses = asyncio.run(fill_locks(host, port, locks, 1024))
        asyncio.run(request(host, port, f"PROPFIND /recordings/ HTTP/1.1\r\nHost: x\r\nDepth: 1\r\n"
                                        f"Authorization: {auth('mcp', 'recorder-pw')}\r\nContent-Length: 0\r\n\r\n"))
        full = rss_kib([p.pid])
        log(f"locks: {statuses}; RSS {idle} KiB idle, {full} KiB at the bound")
        lines.append(f"| webdav RSS at the lock bound ({locks} locks, 1 KiB owners, then PROPFIND) | "
                     f"{full / 1024:.1f} MiB (idle {idle / 1024:.1f}); answers {statuses} | | |")
    finally:
        for p in PROCS:
            p.send_signal(signal.SIGTERM)
        for p in PROCS:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    report = "| figure | exec-allinone | beside | ratio |\n| --- | --- | --- | --- |\n" + "\n".join(lines) + "\n"
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"# Hostile load, {time.strftime('%Y-%m-%d')}\n\n`bench/hostile.py"
                    f"{' --quick' if a.quick else ''}` on {os.cpu_count()} CPUs.\n\n" + report)


if __name__ == "__main__":
    main()
