#!/usr/bin/env python3
"""failoverfs against the raw directory, bindfs and mergerfs, and stacked over another FUSE mount.

Run through benches/compare.sh (it installs the tools and builds the release binary). Every
target serves the same directory tree on one filesystem; each job runs on every target in
turn, the order rotated per round, and the report gives medians and ratios. Needs root (FUSE
mounts, dropping the page cache).

Targets:
  raw         the directory itself
  failoverfs  failoverfs over it (a dir volume, an empty standby), default settings
  bindfs      bindfs --multithreaded over it
  mergerfs    mergerfs over it (one branch)
  fuse        bindfs --multithreaded over it, standing in for cfs-client (the stacked base)
  stacked     failoverfs over that bindfs mount
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = ["raw", "failoverfs", "bindfs", "mergerfs", "fuse", "stacked"]


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fuse_answers(path, deadline=20.0):
    """Wait until `path` is a FUSE mount that answers statfs (the handshake is over)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if os.statvfs(path) and is_fuse(path):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{path}: the mount never answered")


def is_fuse(path):
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == real and fields[sep + 1].startswith("fuse"):
                return True
    return False


class Mounts:
    """Every mount the run makes; all unmounted (and daemons stopped) on exit, even on failure."""

    def __init__(self, base, binary):
        self.base = base
        self.binary = binary
        self.procs = []
        self.points = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in reversed(self.points):
            subprocess.run(["umount", "-l", p], stderr=subprocess.DEVNULL)
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def point(self, name):
        p = os.path.join(self.base, "mnt-" + name)
        os.makedirs(p, exist_ok=True)
        return p

    def bindfs(self, name, src):
        mnt = self.point(name)
        sh("bindfs", "--multithreaded", "-o", "allow_other", src, mnt)
        self.points.append(mnt)
        fuse_answers(mnt)
        return mnt

    def mergerfs(self, name, src):
        mnt = self.point(name)
        sh("mergerfs", "-o", "allow_other,use_ino,category.create=ff", src, mnt)
        self.points.append(mnt)
        fuse_answers(mnt)
        return mnt

    def failoverfs(self, name, src):
        mnt = self.point(name)
        standby = os.path.join(self.base, "standby-" + name)
        os.makedirs(standby, exist_ok=True)
        config = os.path.join(self.base, name + ".toml")
        with open(config, "w") as f:
            f.write(
                f'[mount]\npath = "{mnt}"\nallow_other = true\nstate_file = "off"\n\n'
                f'[admin]\nlisten = "off"\n\n[log]\nlevel = "warn"\n\n'
                f'[[volumes]]\nname = "a"\nbackend = {{ kind = "dir", path = "{src}" }}\n\n'
                f'[[volumes]]\nname = "b"\nbackend = {{ kind = "dir", path = "{standby}" }}\n'
            )
        log = open(os.path.join(self.base, name + ".log"), "w")
        proc = subprocess.Popen(
            [self.binary, "mount", "--config", config], stdout=log, stderr=log
        )
        self.procs.append(proc)
        self.points.append(mnt)
        fuse_answers(mnt)
        return mnt, proc


# ---- jobs: each takes a directory to work in and returns (value, unit) --------------------------


def fio(directory, name, rw, bs, size, runtime=None, extra=()):
    args = [
        "fio", f"--name={name}", f"--directory={directory}", f"--rw={rw}", f"--bs={bs}",
        f"--size={size}", "--ioengine=psync", "--output-format=json", *extra,
    ]
    if runtime:
        args += ["--time_based", f"--runtime={runtime}"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job


def seq_write(d, cfg):
    job = fio(d, "seq", "write", "1M", cfg.size, extra=["--end_fsync=1"])
    return job["write"]["bw_bytes"] / 2**20, "MiB/s"


def seq_read_cold(d, cfg):
    fio(d, "seq", "write", "1M", cfg.size)  # exists already after seq_write; cheap otherwise
    drop_caches()
    job = fio(d, "seq", "read", "1M", cfg.size)
    return job["read"]["bw_bytes"] / 2**20, "MiB/s"


def rand_read_warm(d, cfg):
    fio(d, "rand", "read", "1M", cfg.size)  # lay out and warm the file
    job = fio(d, "rand", "randread", "4k", cfg.size, cfg.runtime, extra=["--invalidate=0"])
    return job["read"]["iops"], "IOPS"


def rand_read_cold(d, cfg):
    fio(d, "rand", "read", "1M", cfg.size)
    drop_caches()
    job = fio(d, "rand", "randread", "4k", cfg.size, cfg.runtime)
    return job["read"]["iops"], "IOPS"


def rand_write(d, cfg):
    job = fio(d, "rw", "randwrite", "4k", cfg.size, cfg.runtime)
    return job["write"]["iops"], "IOPS"


def small_files(d, n):
    names = [os.path.join(d, f"f{i}") for i in range(n)]
    return names


def rate(n, fn):
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def create(d, cfg):
    names = small_files(d, cfg.files)
    data = b"x" * 100

    def run():
        for p in names:
            fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)

    return rate(len(names), run), "files/s"


def stat(d, cfg):
    names = small_files(d, cfg.files)
    time.sleep(1.1)  # past the default attribute TTL: every stat asks the filesystem
    return rate(len(names), lambda: [os.stat(p) for p in names]), "stat/s"


def list_dir(d, cfg):
    reps = 5

    def run():
        for _ in range(reps):
            with os.scandir(d) as it:
                for e in it:
                    e.name
    return rate(reps, run), "listings/s"


def open_read_close(d, cfg):
    names = small_files(d, cfg.files)

    def run():
        for p in names:
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)

    return rate(len(names), run), "files/s"


def unlink(d, cfg):
    names = small_files(d, cfg.files)
    return rate(len(names), lambda: [os.unlink(p) for p in names]), "files/s"


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def ls_l_big(d, cfg):
    big = os.path.join(d, "big")
    timed(["ls", "-l", "--color=never", big])  # warm
    return timed(["ls", "-l", "--color=never", big]), "s"


def find_big(d, cfg):
    big = os.path.join(d, "big")
    timed(["find", big, "-size", "0"])
    return timed(["find", big, "-size", "0"]), "s"


# Data jobs run in per-target work directories; file jobs in a directory of their own, in the
# order given (create, stat, list, open+read+close, unlink form one sequence).
DATA_JOBS = [
    ("seq write 1 MiB, end_fsync", seq_write),
    ("seq read 1 MiB, cold", seq_read_cold),
    ("4k rand read, warm", rand_read_warm),
    ("4k rand read, cold", rand_read_cold),
    ("4k rand write", rand_write),
]
FILE_JOBS = [
    ("create 100 B files", create),
    ("stat", stat),
    ("list the directory", list_dir),
    ("open+read+close", open_read_close),
    ("unlink", unlink),
]
BIG_JOBS = [("ls -l, big directory", ls_l_big), ("find -size 0, big directory", find_big)]
LOWER_IS_BETTER = {"s"}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--base", default="/var/tmp/failoverfs-bench",
                    help="work directory, on the filesystem to measure (not tmpfs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="1G", help="fio file size")
    ap.add_argument("--runtime", type=int, default=10, help="seconds per random-I/O job")
    ap.add_argument("--files", type=int, default=5000, help="small files per round")
    ap.add_argument("--big", type=int, default=200000, help="files in the big directory")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the harness works")
    ap.add_argument("--out", default="-", help="write the report here (default: stdout)")
    cfg = ap.parse_args()
    if cfg.quick:
        cfg.size, cfg.runtime, cfg.files, cfg.big, cfg.rounds = "16M", 1, 200, 2000, 1
    if os.geteuid() != 0:
        sys.exit("needs root (FUSE mounts, drop_caches)")

    shutil.rmtree(cfg.base, ignore_errors=True)
    common = os.path.join(cfg.base, "common")
    os.makedirs(os.path.join(common, "big"))
    for i in range(cfg.big):
        open(os.path.join(common, "big", f"f{i:07d}"), "w").close()

    results = {}  # (job, target) -> [values]
    units = {}
    mem = {}
    with Mounts(cfg.base, os.path.abspath(cfg.binary)) as m:
        mounts = {"raw": common}
        mounts["failoverfs"], ffs = m.failoverfs("failoverfs", common)
        mounts["bindfs"] = m.bindfs("bindfs", common)
        mounts["mergerfs"] = m.mergerfs("mergerfs", common)
        mounts["fuse"] = m.bindfs("fuse", common)
        mounts["stacked"], stacked = m.failoverfs("stacked", mounts["fuse"])
        time.sleep(1)
        mem["idle"] = rss_kib(ffs.pid)

        for r in range(cfg.rounds):
            order = TARGETS[r % len(TARGETS):] + TARGETS[: r % len(TARGETS)]
            for job, fn in DATA_JOBS:
                for t in order:
                    work = os.path.join(mounts[t], f"work-{t}")
                    os.makedirs(work, exist_ok=True)
                    v, u = fn(work, cfg)
                    results.setdefault((job, t), []).append(v)
                    units[job] = u
                    print(f"round {r + 1} {job:32} {t:11} {v:14.1f} {u}", file=sys.stderr)
            for t in order:
                files = os.path.join(mounts[t], f"files-{t}")
                os.makedirs(files, exist_ok=True)
                for job, fn in FILE_JOBS:
                    v, u = fn(files, cfg)
                    results.setdefault((job, t), []).append(v)
                    units[job] = u
                    print(f"round {r + 1} {job:32} {t:11} {v:14.1f} {u}", file=sys.stderr)
            for job, fn in BIG_JOBS:
                for t in order:
                    v, u = fn(mounts[t], cfg)
                    results.setdefault((job, t), []).append(v)
                    units[job] = u
                    print(f"round {r + 1} {job:32} {t:11} {v:14.3f} {u}", file=sys.stderr)
        # Every big-directory entry is known to the kernel (and so to failoverfs) right now.
        mem["after_big"] = rss_kib(ffs.pid)
        # The daemon hands the allocator's free pages back every 10 s after large changes in its
        # inode table: what it keeps for the cached inodes is what is left after that.
        time.sleep(12)
        mem["settled"] = rss_kib(ffs.pid)
        mem["stacked_pid"] = stacked.pid

    report = render(cfg, results, units, mem)
    if cfg.out == "-":
        print(report)
    else:
        with open(cfg.out, "w") as f:
            f.write(report)
    shutil.rmtree(cfg.base, ignore_errors=True)


def render(cfg, results, units, mem):
    med = {k: statistics.median(v) for k, v in results.items()}
    jobs = [j for j, _ in DATA_JOBS + FILE_JOBS + BIG_JOBS]

    def ratio(job, a, b):
        x, y = med.get((job, a)), med.get((job, b))
        if not x or not y:
            return "-"
        # Ratios read "how many times as good as": inverted for times.
        return f"{(y / x if units[job] in LOWER_IS_BETTER else x / y):.2f}"

    lines = [
        f"Medians of {cfg.rounds} interleaved rounds; fio psync, file size {cfg.size}, random jobs "
        f"{cfg.runtime} s; {cfg.files} small files; big directory of {cfg.big} files.",
        "",
        "| job | unit | raw | failoverfs | bindfs | mergerfs | ffs/raw | ffs/bindfs | ffs/mergerfs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for j in jobs:
        vals = " | ".join(f"{med.get((j, t), 0):,.1f}" for t in ["raw", "failoverfs", "bindfs", "mergerfs"])
        lines.append(
            f"| {j} | {units[j]} | {vals} | {ratio(j, 'failoverfs', 'raw')} | "
            f"{ratio(j, 'failoverfs', 'bindfs')} | {ratio(j, 'failoverfs', 'mergerfs')} |"
        )
    lines += [
        "",
        "Stacked: failoverfs over a FUSE mount (bindfs --multithreaded standing in for cfs-client)"
        " against that mount alone.",
        "",
        "| job | unit | FUSE mount alone | failoverfs over it | ratio |",
        "|---|---|---|---|---|",
    ]
    for j in jobs:
        lines.append(
            f"| {j} | {units[j]} | {med.get((j, 'fuse'), 0):,.1f} | "
            f"{med.get((j, 'stacked'), 0):,.1f} | {ratio(j, 'stacked', 'fuse')} |"
        )
    per_inode = (mem["after_big"] - mem["idle"]) * 1024 / max(cfg.big, 1)
    settled = (mem["settled"] - mem["idle"]) * 1024 / max(cfg.big, 1)
    lines += [
        "",
        f"failoverfs memory: {mem['idle'] / 1024:.1f} MiB idle (RSS), "
        f"{mem['after_big'] / 1024:.1f} MiB with the big directory known to the kernel "
        f"right after the last job (about {per_inode:.0f} bytes per cached inode, all jobs' "
        f"state included), {mem['settled'] / 1024:.1f} MiB 12 s later, once the daemon gave "
        f"the allocator's free pages back (about {settled:.0f} bytes per cached inode).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
