#!/usr/bin/env python3
"""tests/slurm/: a sharded match run on a real Slurm (issue 14), in CI.

Starts munged, slurmctld and slurmd from Debian's packages (slurmctld,
slurmd, slurm-client, munge) on this machine, as root, with a generated
single-node slurm.conf in a temporary directory (proctrack/linuxproc,
task/none, state and spool in the directory, the node's CPUs and memory
from `slurmd -C`), then runs tools/slurm/ as a user would:

  array    submit.sh: an array job of 4 shards and the merge job
           (--dependency=afterok); the merged file equals a single run over
           the same pairs, byte for byte
  cancel   one array task cancelled mid-run (scancel), resubmitted alone
           (sbatch --array=K): it resumes from its journal; merged = single
  failing  one shard fails (a pair that kills its workers): the merge job
           names that shard and writes nothing
  readonly every shard run by `nobody` against a store in a directory it
           cannot write (no lock file: the lock-less path); merged = single

Exit 77 (skip, with the reason) where Slurm cannot start here: not root, the
packages missing, a daemon that does not come up. Every daemon it started is
stopped by its PID. Usage: slurm.py [CASE...] with $FEATSTORE set.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "match"))

FST = os.environ.get("FEATSTORE", "")
SRC = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SLURM_TOOLS = os.path.join(SRC, "tools", "slurm")
SHARDS = 4


class Skip(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, cond, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    """munged + slurmctld + slurmd in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="fst-slurm-")
        os.chmod(self.dir, 0o755)              # nobody's jobs go through it
        self.pids = []
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("SLURM_"):
                del self.env[k]
        self.env["SLURM_CONF"] = self.p("slurm.conf")

    def p(self, *parts):
        return os.path.join(self.dir, *parts)

    def start(self):
        if os.geteuid() != 0:
            raise Skip("not root: the test starts munged, slurmctld and slurmd")
        for b in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scancel", "squeue",
                  "scontrol", "sinfo"):
            if not shutil.which(b) and not os.path.exists(f"/usr/sbin/{b}"):
                raise Skip(f"{b} not installed (apt-get install slurmctld slurmd slurm-client "
                           "munge)")
        d = self.p
        for sub in ("state", "spool", "munge"):
            os.mkdir(d(sub))
        os.chmod(d("munge"), 0o700)
        # munge: its own key and socket here, not the system's
        key = d("munge", "munge.key")
        r = subprocess.run(["mungekey", "--create", "--keyfile", key], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise Skip(f"mungekey: {r.stderr.strip()}")
        sock = d("munge", "munge.socket")
        r = subprocess.run(["munged", "--force", "--key-file", key, "--socket", sock,
                            "--pid-file", d("munge", "munged.pid"), "--log-file",
                            d("munge", "munged.log"), "--seed-file", d("munge", "seed")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip(f"munged does not start: {r.stderr.strip()}")
        self.pids.append(int(wait_for("munged's pid file", lambda: self.read_pid(
            d("munge", "munged.pid")), 10)))
        # the socket must be usable by nobody's jobs too
        os.chmod(d("munge"), 0o755)
        host = socket.gethostname().split(".")[0]
        r = subprocess.run(["slurmd", "-C"], capture_output=True, text=True)
        node = r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else ""
        if not node.startswith("NodeName="):
            raise Skip(f"slurmd -C: {r.stdout} {r.stderr}")
        node = " ".join(f for f in node.split() if not f.startswith("RealMemory="))
        mem = re.search(r"RealMemory=(\d+)", r.stdout)
        mem = int(mem.group(1)) if mem else 1024
        cpus = int(re.search(r"CPUs=(\d+)", node).group(1))
        self.cpus = cpus
        conf = f"""ClusterName=fsttest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={d("state")}
SlurmdSpoolDir={d("spool")}
SlurmctldPidFile={d("slurmctld.pid")}
SlurmdPidFile={d("slurmd.pid")}
SlurmctldLogFile={d("slurmctld.log")}
SlurmdLogFile={d("slurmd.log")}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
{node} RealMemory={max(mem // 2, 256)} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
        with open(d("slurm.conf"), "w") as f:
            f.write(conf)
        os.chmod(d("slurm.conf"), 0o644)
        for daemon, pidf in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            r = subprocess.run([f"/usr/sbin/{daemon}", "-f", d("slurm.conf")],
                               capture_output=True, text=True, env=self.env)
            if r.returncode != 0:
                raise Skip(f"{daemon} does not start: {r.stderr.strip()} {self.log(daemon)}")
            try:
                self.pids.append(int(wait_for(f"{daemon}'s pid file",
                                              lambda: self.read_pid(d(pidf)), 15)))
            except AssertionError:
                raise Skip(f"{daemon} does not start: {self.log(daemon)}")
        try:
            wait_for("the node to be idle", lambda: "idle" in self.sinfo(), 30)
        except AssertionError:
            raise Skip(f"the node does not come up: {self.sinfo()} {self.log('slurmd')}")

    def log(self, daemon):
        try:
            with open(self.p(f"{daemon}.log")) as f:
                return f.read()[-1500:]
        except OSError:
            return ""

    @staticmethod
    def read_pid(path):
        try:
            with open(path) as f:
                v = f.read().strip()
            return v if v.isdigit() and os.path.exists(f"/proc/{v}") else None
        except OSError:
            return None

    def sinfo(self):
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                           env=self.env)
        return r.stdout.strip()

    def stop(self):
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for pid in reversed(self.pids):
            t0 = time.time()
            while time.time() - t0 < 10 and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.1)
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- jobs ----

    def sbatch(self, *args, env=None):
        e = dict(self.env)
        if env:
            e.update(env)
        r = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                           env=e, cwd=self.dir)
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout.strip().split(";")[0]

    def states(self, job):
        """{array task or job id: state} from scontrol (jobs stay MinJobAge)."""
        r = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True,
                           text=True, env=self.env)
        out = {}
        for line in r.stdout.splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            key = f.get("ArrayTaskId", f.get("JobId"))
            out[key] = (f.get("JobState"), f.get("ExitCode"), f.get("JobId"))
        return out

    def wait(self, job, timeout=120, final=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                           "OUT_OF_MEMORY", "NODE_FAIL")):
        def done():
            st = self.states(job)
            return st if st and all(s[0] in final for s in st.values()) else None
        try:
            return wait_for(f"job {job}", done, timeout)
        except AssertionError:
            raise AssertionError(f"job {job}: {self.states(job)}\n{self.log('slurmctld')}")


# ---- data -------------------------------------------------------------------------

def fst(*args, env=None, expect=0):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    if env:
        e.update(env)
    r = subprocess.run([FST, *args], capture_output=True, text=True, env=e, timeout=300)
    assert r.returncode == expect, (args, r.returncode, r.stderr)
    return r


def dataset(c):
    """A store and a pairs file of 40 images, and the single run's file."""
    d = c.p("data")
    os.mkdir(d)
    os.chmod(d, 0o755)
    h5, pairs, store = os.path.join(d, "f.h5"), os.path.join(d, "pairs.txt"), \
        os.path.join(d, "db.fst")
    fst("synth", h5, "--pairs", pairs, "--images", "40", "--keypoints", "256", "--npairs",
        "240", "--quiet")
    fst("import", h5, store, "--quiet")
    ref = os.path.join(d, "single.h5")
    fst("match", store, pairs, "-o", ref, "--workers", "2", "--quiet")
    with open(ref, "rb") as f:
        return store, pairs, f.read()


def same_bytes(path, ref):
    with open(path, "rb") as f:
        assert f.read() == ref, f"{path} differs from the single run's file"


def job_env(**kv):
    e = {"FEATSTORE": FST}
    e.update({k: str(v) for k, v in kv.items()})
    return e


def case_array(c, store, pairs, ref):
    out = c.p("array", "matches.h5")
    os.makedirs(os.path.dirname(out))
    r = subprocess.run([os.path.join(SLURM_TOOLS, "submit.sh"), str(SHARDS), store, pairs, out,
                        "--workers", "1"], capture_output=True, text=True,
                       env={**c.env, **job_env(FST_SBATCH_ARRAY="--cpus-per-task=1")},
                       cwd=c.p("array"))
    assert r.returncode == 0, r.stderr
    m = re.search(r"array job (\d+) .* merge job (\d+)", r.stdout)
    assert m, r.stdout
    arr, merge = m.groups()
    st = c.wait(arr)
    assert len(st) == SHARDS and all(s[0] == "COMPLETED" for s in st.values()), st
    st = c.wait(merge)
    assert list(st.values())[0][0] == "COMPLETED", (st, open(c.p("array",
                                                    f"featstore-merge-{merge}.out")).read())
    same_bytes(out, ref)
    parts = sorted(os.listdir(out + ".parts"))
    assert parts == [f"part-{k}-of-{SHARDS}.h5" for k in range(SHARDS)], parts   # no journals
    log = open(c.p("array", f"featstore-merge-{merge}.out")).read()
    assert f"from {SHARDS} parts" in log, log


def array_job(c, sub, store, pairs, *args, env=None, array=f"0-{SHARDS - 1}", extra=()):
    d = c.p(sub)
    os.makedirs(d, exist_ok=True)
    return c.sbatch(f"--array={array}", "--cpus-per-task=1", *extra, "-D", d,
                    os.path.join(SLURM_TOOLS, "match-array.sbatch"), str(SHARDS), store, pairs,
                    os.path.join(d, "parts"), "--workers", "1", "--json", *args,
                    env=job_env(**(env or {})))


def task_out(c, sub, job, k):
    with open(c.p(sub, f"featstore-match-{job}_{k}.out")) as f:
        return f.read()


def case_cancel(c, store, pairs, ref):
    """scancel one array task mid-run, resubmit it alone: it resumes."""
    logp = c.p("cancel-log.txt")
    arr = array_job(c, "cancel", store, pairs, env={"FST_TEST_PAIR_DELAY_MS": 60,
                                                    "FST_TEST_MATCH_LOG": logp})
    # task 1 running and some of its pairs done
    def running():
        st = c.states(arr)
        return st.get("1", ("",))[0] == "RUNNING" and os.path.exists(logp) and \
            os.path.getsize(logp) > 0 and os.path.exists(c.p("cancel", "parts",
                                                             f"part-1-of-{SHARDS}.h5.journal"))
    wait_for("array task 1 to match pairs", running, 60)
    time.sleep(1.0)
    subprocess.run(["scancel", f"{arr}_1"], check=True, env=c.env)
    st = c.wait(arr, timeout=150)
    assert st["1"][0] == "CANCELLED", st
    assert all(st[str(k)][0] == "COMPLETED" for k in range(SHARDS) if k != 1), st
    parts = c.p("cancel", "parts")
    assert not os.path.exists(os.path.join(parts, f"part-1-of-{SHARDS}.h5"))
    assert os.path.exists(os.path.join(parts, f"part-1-of-{SHARDS}.h5.journal"))
    # resubmitted alone: an array of one task, N from the script's argument
    again = array_job(c, "cancel", store, pairs, array="1")
    st = c.wait(again)
    assert list(st.values())[0][0] == "COMPLETED", st
    js = json.loads(task_out(c, "cancel", again, 1).strip().splitlines()[-1])
    assert js["pairs_resumed"] > 0 and js["shard"]["index"] == 1, js
    merge = c.sbatch("-D", c.p("cancel"), os.path.join(SLURM_TOOLS, "merge.sbatch"),
                     str(SHARDS), parts, c.p("cancel", "matches.h5"), env=job_env())
    st = c.wait(merge)
    assert list(st.values())[0][0] == "COMPLETED", st
    same_bytes(c.p("cancel", "matches.h5"), ref)


def case_failing(c, store, pairs, ref):
    """One shard fails: the merge job (afterany) names it, writes nothing."""
    with open(pairs) as f:
        first = f.readline().split()
    arr = array_job(c, "failing", store, pairs,
                    env={"FST_TEST_CRASH_PAIR": f"{first[0]} {first[1]}"})
    st = c.wait(arr)
    assert st["0"][0] == "FAILED" and all(st[str(k)][0] == "COMPLETED"
                                          for k in range(1, SHARDS)), st
    out = c.p("failing", "matches.h5")
    merge = c.sbatch("--dependency=afterany:" + arr, "-D", c.p("failing"),
                     os.path.join(SLURM_TOOLS, "merge.sbatch"), str(SHARDS),
                     c.p("failing", "parts"), out, env=job_env())
    st = c.wait(merge)
    assert list(st.values())[0][0] == "FAILED", st
    log = open(c.p("failing", f"featstore-merge-{merge}.out")).read()
    assert f"part-0-of-{SHARDS}.h5 (shard 0/{SHARDS}) is incomplete: 1 pair failed" in log, log
    assert "nothing written" in log, log
    assert not [f for f in os.listdir(c.p("failing")) if f.startswith("matches.h5")]


def case_readonly(c, store, pairs, ref):
    """Every shard run by nobody against root's store in a directory nobody
    cannot write: no lock file anywhere, and the same result."""
    ro = c.p("ro")
    os.mkdir(ro)
    shutil.copy(store, os.path.join(ro, "db.fst"))
    shutil.copy(pairs, os.path.join(ro, "pairs.txt"))
    os.chmod(os.path.join(ro, "db.fst"), 0o444)
    os.chmod(ro, 0o555)
    d = c.p("readonly")
    os.mkdir(d)
    os.chmod(d, 0o777)
    arr = array_job(c, "readonly", os.path.join(ro, "db.fst"), os.path.join(ro, "pairs.txt"),
                    extra=("--uid=nobody", "--gid=nogroup"))
    st = c.wait(arr)
    assert all(s[0] == "COMPLETED" for s in st.values()), (st, task_out(c, "readonly", arr, 0))
    assert os.listdir(ro) == ["db.fst", "pairs.txt"] or sorted(os.listdir(ro)) == \
        ["db.fst", "pairs.txt"], os.listdir(ro)
    out = c.p("readonly", "matches.h5")
    merge = c.sbatch("--dependency=afterok:" + arr, "--uid=nobody", "--gid=nogroup", "-D", d,
                     os.path.join(SLURM_TOOLS, "merge.sbatch"), str(SHARDS),
                     c.p("readonly", "parts"), out, env=job_env())
    st = c.wait(merge)
    assert list(st.values())[0][0] == "COMPLETED", st
    same_bytes(out, ref)
    assert os.stat(out).st_uid != 0


CASES = {"array": case_array, "cancel": case_cancel, "failing": case_failing,
         "readonly": case_readonly}


def main():
    names = sys.argv[1:] or list(CASES)
    if not FST:
        print("1..0 # SKIP FEATSTORE not set")
        return 77
    # meson's timeout sends SIGTERM: stop the daemons on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    c = Cluster()
    try:
        try:
            c.start()
        except Skip as e:
            print(f"1..0 # SKIP {e}")
            sys.stderr.write(f"slurm: skipped: {e}\n")
            return 77
        store, pairs, ref = dataset(c)
        print(f"1..{len(names)}")
        failed = 0
        for i, n in enumerate(names, 1):
            t0 = time.time()
            try:
                CASES[n](c, store, pairs, ref)
                print(f"ok {i} {n} # {time.time() - t0:.1f} s")
            except Exception as e:   # report and go on with the next case
                failed += 1
                import traceback
                for line in traceback.format_exc().splitlines():
                    print(f"# {line}")
                print(f"not ok {i} {n}")
            sys.stdout.flush()
        return 1 if failed else 0
    finally:
        c.stop()


if __name__ == "__main__":
    sys.exit(main())
