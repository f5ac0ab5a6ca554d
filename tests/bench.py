#!/usr/bin/env python3
"""spillway against a same-run baseline: the benchmark behind the README's performance section.

Absolute MiB/s on a shared VM move by up to 2x between days, so every case runs the bare durable
endpoint (spillway-baseline: parse, base64, append, group fdatasync, answer; no S3) and then
spillway, with the same load generator settings, back to back, and reports the ratio.

    python3 tests/bench.py                       # every case, 15 s each, s3s-fs as the S3 server
    python3 tests/bench.py --seconds 3 --cases plain,gzip   # what CI runs, so it cannot rot

s3s-fs keeps its objects in /dev/shm by default: on the development VM's ext4, creating a file
costs s3s-fs more CPU than hashing its megabyte (the inode allocator scans inodes freed by
earlier runs), varying 2-3x from run to run with the file system's history, and that CPU is
taken from the same two cores spillway runs on. A real S3 or MinIO has disks of its own.
`--s3-dir DIR` puts them elsewhere (the work directory, next to the journal, to see it).

spillway's rows are end to end: the payload found delivered divided by the load time plus the
time until the last accepted record was delivered. CPU per MiB is the daemon's user + system
seconds (from /proc) over the payload MiB. Needs target/release/{spillway,spillway-baseline,
spillway-loadgen} (cargo build --release --bins) and s3s-fs (S3S_FS or on PATH).
"""

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
TICKS = os.sysconf("SC_CLK_TCK")

# name: (load generator flags for both runs, flags for spillway's stream only, what it is)
CASES = {
    "plain": ([], [], "JSON lines, uncompressed, closed loop"),
    "gzip": ([], ["--compression", "GZIP"], "JSON lines, GZIP, closed loop"),
    "paced-plain": (["--rate", "PACED"], [], "uncompressed, paced at 0.5x the baseline"),
    "paced-gzip": (["--rate", "PACED"], ["--compression", "GZIP"], "GZIP, paced at 0.5x the baseline"),
    "partition": ([], ["--partition-by-location"], "dynamic partitioning (jq, 12 partitions)"),
    "parquet": ([], ["--parquet", "ZSTD", "--parquet-table"], "Parquet ZSTD, table schema"),
    "iceberg": ([], ["--iceberg"], "Iceberg append (Parquet ZSTD, SQLite catalog)"),
}

# The load generator's records as a table (`--parquet-table`): the one the README's Parquet
# example declares, from its [[table]] on.
with open(os.path.join(ROOT, "examples", "bench-parquet.toml")) as example:
    PARQUET_TABLE = "\n[[table]]" + example.read().split("[[table]]", 1)[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def loadgen(endpoint, seconds, flags, pid, metrics=None):
    args = [os.path.join(RELEASE, "spillway-loadgen"), "--endpoint", endpoint, "--stream", "bench",
            "--connections", "8", "--record-size", "1024", "--batch", "500",
            "--duration", str(seconds), "--warmup", "2", "--daemon-pid", str(pid), "--json", *flags]
    if metrics:
        args += ["--metrics-url", metrics]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 400)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    result["loadgen_cpu"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result


def summary(result, cpu, wall_extra=0.0, s3_cpu=0.0):
    mib = result["records_accepted"] * 1024 / 1048576
    seconds = result["measured_s"] + wall_extra
    requests = result["requests_ok"] + result["throttled"] + result["errors"]
    return {
        "mib_s": mib / seconds,
        "p99": result["latency_ms"]["p99"],
        "refused": 100.0 * result["throttled"] / max(requests, 1),
        "rss": result["daemon_peak_rss_mib"],
        "cpu_per_mib": cpu / max(mib, 1e-9),
        "loadgen_cpu_per_mib": result["loadgen_cpu"] / max(mib, 1e-9),
        "s3_cpu_per_mib": s3_cpu / max(mib, 1e-9),
        "delivered": result.get("delivered"),
    }


def journal_syncs(port):
    """The journal's group commits so far: (groups, seconds spent writing and fdatasyncing them)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("spillway_journal_sync_duration_seconds_count"):
            count += float(line.split()[-1])
        elif line.startswith("spillway_journal_sync_duration_seconds_sum"):
            total += float(line.split()[-1])
    return count, total


def run_baseline(work, seconds, flags):
    port = free_port()
    data = os.path.join(work, "baseline")
    p = subprocess.Popen([os.path.join(RELEASE, "spillway-baseline"), "--listen", f"127.0.0.1:{port}",
                          "--dir", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        before = cpu_seconds(p.pid)
        result = loadgen(f"http://127.0.0.1:{port}", seconds, flags, p.pid)
        cpu = cpu_seconds(p.pid) - before
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(data, ignore_errors=True)
    return summary(result, cpu)


def run_spillway(work, seconds, flags, stream_flags, sign, perf=None, extra_config="", s3_root=None, local=False,
                 binary=None, local_root=None):
    s3_port, port = free_port(), free_port()
    # The local store is spillway's own disk: next to the journal unless --local-dir says.
    if local:
        s3_dir = os.path.join(local_root or work, "s3")
    else:
        s3_dir = os.path.join(s3_root or work, "s3")
    os.makedirs(os.path.join(s3_dir, "bench"))
    s3 = subprocess.Popen([os.environ.get("S3S_FS", "s3s-fs"), "--host", "127.0.0.1", "--port", str(s3_port),
                           "--access-key", "bench", "--secret-key", "bench-secret", s3_dir],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = os.path.join(work, "spillway.toml")
    with open(config, "w") as f:
        # Before any table header, so dotted keys (`upload.gzip_level = 3`) are top-level.
        f.write(extra_config.replace("\\n", "\n") + "\n")
        if local:
            # The local store, in the same directory s3s-fs would use (fsync'd as objects land).
            f.write(f'[object_store]\nkind = "local"\nlocal_root = "{s3_dir}"\n')
        else:
            f.write(f"""[object_store]
kind = "s3"
endpoint = "http://127.0.0.1:{s3_port}"
region = "us-east-1"
access_key_id = "bench"
secret_access_key = "bench-secret"
allow_http = true
""")
        if sign:
            f.write('[[auth.keys]]\naccess_key_id = "AKIDBENCH"\nsecret = "bench-secret"\n')
        # Iceberg tables in the bench bucket (the default SQLite catalog under the data dir).
        f.write('[iceberg.catalogs.default]\nwarehouse = "s3://bench/warehouse"\n')
        f.write(PARQUET_TABLE)
    data = os.path.join(work, "spillway")
    log = open(os.path.join(work, "spillway.log"), "w")
    d = subprocess.Popen([binary or os.path.join(RELEASE, "spillway"), "--config", config, "--listen", f"127.0.0.1:{port}",
                          "--data-dir", data], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(s3_port)
        wait_port(port)
        extra = ["--create-stream", "--bucket", "bench", "--buffer-seconds", "1", *stream_flags]
        if sign:
            extra += ["--sign", "AKIDBENCH:bench-secret"]
        before, s3_before = cpu_seconds(d.pid), cpu_seconds(s3.pid)
        recorders = []
        if perf:
            for pid, out in [(d.pid, perf), (s3.pid, perf.replace(".data", "-s3s-fs.data"))]:
                recorders.append(subprocess.Popen(["perf", "record", "-F", "499", "-g", "-o", out, "-p", str(pid)],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        result = loadgen(f"http://127.0.0.1:{port}", seconds, flags + extra, d.pid)
        for recorder in recorders:
            recorder.send_signal(2)
            recorder.wait()
        cpu, s3_cpu = cpu_seconds(d.pid) - before, cpu_seconds(s3.pid) - s3_before
        if result["delivered"] is not True:
            raise SystemExit(f"not everything was delivered: {result}")
        row = summary(result, cpu, wall_extra=result["delivered_after_s"] or 0.0, s3_cpu=s3_cpu)
        row["syncs"] = journal_syncs(port)
        row["seconds"] = result["measured_s"] + (result["delivered_after_s"] or 0.0)
        return row
    finally:
        d.terminate()
        d.wait()
        s3.terminate()
        s3.wait()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(s3_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--sign", action="store_true", help="spillway verifies SigV4; the load generator signs")
    parser.add_argument("--config", default="", metavar="TOML",
                        help="appended to spillway's config file (\\n for new lines), e.g. 'upload.gzip_level = 3'")
    parser.add_argument("--s3-dir", metavar="DIR", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
                        help="where s3s-fs keeps its objects (default: /dev/shm, a tmpfs; see the module doc)")
    parser.add_argument("--local", action="store_true",
                        help="spillway writes to its local directory store (next to its journal) instead of s3s-fs")
    parser.add_argument("--spillway-bin", metavar="PATH",
                        help="another spillway binary to measure (an earlier build, for a before/after row)")
    parser.add_argument("--local-dir", metavar="DIR",
                        help="with --local: where the store's directory goes (/dev/shm: the pipeline without an S3 "
                             "server's CPU and without writing every byte to the disk twice)")
    parser.add_argument("--pace", type=float, default=0.5, metavar="FRACTION",
                        help="the paced cases offer this fraction of the baseline's closed-loop rate (0.5)")
    parser.add_argument("--perf", metavar="DIR", help="record a perf profile of spillway per case into DIR")
    args = parser.parse_args()
    cases = args.cases.split(",")
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c}; known: {', '.join(CASES)}")
    for binary in ["spillway", "spillway-baseline", "spillway-loadgen"]:
        if not os.path.exists(os.path.join(RELEASE, binary)):
            raise SystemExit(f"target/release/{binary} is missing: cargo build --release --bins")
    rows = []
    baseline_rate = None
    with tempfile.TemporaryDirectory(prefix="spillway-bench-") as work:
        for case in cases:
            flags, stream_flags, what = CASES[case]
            if "PACED" in flags:
                what = what.replace("0.5x", f"{args.pace:g}x")
                if baseline_rate is None:
                    baseline_rate = run_baseline(work, args.seconds, [])["mib_s"]
                flags = [f"{baseline_rate * args.pace:.1f}" if f == "PACED" else f for f in flags]
            base = run_baseline(work, args.seconds, flags)
            if not flags:
                baseline_rate = base["mib_s"]
            perf = os.path.join(os.path.abspath(args.perf), f"{case}.data") if args.perf else None
            spill = run_spillway(work, args.seconds, flags, stream_flags, args.sign, perf, args.config, args.s3_dir,
                                 args.local, args.spillway_bin, args.local_dir)
            rows.append((case, what, base, spill))
            print(f"{case}: baseline {base['mib_s']:.1f} MiB/s, spillway {spill['mib_s']:.1f} MiB/s "
                  f"({spill['mib_s'] / base['mib_s']:.2f}x)", file=sys.stderr)
    print("| case | baseline MiB/s | spillway MiB/s | ratio | p99 ms (base / spillway) | refused % "
          "(base / spillway) | peak RSS MiB (base / spillway) | CPU s per MiB (base / spillway) |")
    print("|---|---|---|---|---|---|---|---|")
    for case, what, b, s in rows:
        print(f"| {what} | {b['mib_s']:.1f} | {s['mib_s']:.1f} | {s['mib_s'] / b['mib_s']:.2f}x | "
              f"{b['p99']:.1f} / {s['p99']:.1f} | {b['refused']:.1f} / {s['refused']:.1f} | "
              f"{b['rss']:.0f} / {s['rss']:.0f} | {b['cpu_per_mib']:.4f} / {s['cpu_per_mib']:.4f} |")
    print()
    print("CPU seconds per payload MiB in spillway's runs, per process (the two cores are shared):")
    print()
    print("| case | spillway | s3s-fs | load generator |")
    print("|---|---|---|---|")
    for case, what, b, s in rows:
        print(f"| {what} | {s['cpu_per_mib']:.4f} | {s['s3_cpu_per_mib']:.4f} | {s['loadgen_cpu_per_mib']:.4f} |")
    print()
    print("spillway's journal group commits (write + fdatasync of one group), warm-up and drain included:")
    print()
    print("| case | groups per s | mean ms per group | share of the run's time committing |")
    print("|---|---|---|---|")
    for case, what, b, s in rows:
        count, total = s["syncs"]
        print(f"| {what} | {count / s['seconds']:.0f} | {1000 * total / max(count, 1):.2f} | "
              f"{100 * total / s['seconds']:.0f}% |")


if __name__ == "__main__":
    main()
