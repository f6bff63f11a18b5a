"""A throw-away single-node Slurm cluster for the integration tests (Debian's slurm-wlm and munge).

Everything lives in one folder: the munge key and socket, ``slurm.conf`` (free ports, this host's
name), state, spool, logs. The daemons run in the foreground as children of the test process and
are stopped by their PIDs; clients find the cluster only through ``SLURM_CONF``, so a cluster
already configured on the machine (``/etc/slurm``) is neither used nor touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (one line), or None; installs the packages if needed."""
    if all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS) and shutil.which("sbatch"):
        return None
    if os.name != "posix" or os.geteuid() != 0:
        return "a single-node Slurm needs root to install and run slurm-wlm and munge"
    if shutil.which("apt-get") is None:
        return "a single-node Slurm needs apt-get to install slurm-wlm and munge"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    for attempt in ((cmd,), (["apt-get", "update", "-q"], cmd)):
        try:
            if all(subprocess.run(c, env=env, capture_output=True, timeout=300).returncode == 0 for c in attempt):
                return None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "apt-get could not install slurm-wlm and munge (no package mirror reachable?)"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _daemon(path: str) -> str:
    return shutil.which(path) or str(Path("/usr/sbin", path))


class Cluster:
    """A running cluster: ``env`` (os.environ plus SLURM_CONF), ``partition``, ``stop()``."""

    partition = "tiny"

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self, timeout: float = 60.0) -> "Cluster":
        r = self.root
        for sub in ("state", "spool", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)  # munged refuses folders others can write to
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        sock = r / "munge" / "munge.socket"
        host = socket.gethostname().split(".")[0]
        ctl_port, d_port = _free_ports(2)
        cpus = os.cpu_count() or 1
        conf = {
            "ClusterName": "basisprune-test", "SlurmctldHost": host, "SlurmUser": "root", "SlurmdUser": "root",
            "SlurmctldPort": ctl_port, "SlurmdPort": d_port, "AuthType": "auth/munge",
            "AuthInfo": f"socket={sock}", "CredType": "cred/munge",
            "StateSaveLocation": r / "state", "SlurmdSpoolDir": r / "spool",
            "SlurmctldPidFile": r / "slurmctld.pid", "SlurmdPidFile": r / "slurmd.pid",
            "SlurmctldLogFile": r / "slurmctld.log", "SlurmdLogFile": r / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none", "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none", "SchedulerType": "sched/backfill", "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core", "ReturnToService": 2, "MpiDefault": "none",
        }
        lines = [f"{k}={v}" for k, v in conf.items()]
        lines += [f"NodeName={host} CPUs={cpus} RealMemory=4000 State=UNKNOWN",
                  f"PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP"]
        self.conf.write_text("\n".join(lines) + "\n")
        log = open(r / "daemons.out", "ab")  # noqa: SIM115 - closed with the daemons
        self._log = log

        def spawn(*cmd: str) -> None:
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                               start_new_session=True))

        spawn(_daemon("munged"), "-F", "--force", f"--key-file={key}", f"--socket={sock}",
              f"--pid-file={r / 'munge' / 'munged.pid'}", f"--log-file={r / 'munge' / 'munged.log'}",
              f"--seed-file={r / 'munge' / 'munged.seed'}")
        deadline = time.monotonic() + timeout
        while not sock.exists():
            self._check(deadline, "munged did not create its socket")
        spawn(_daemon("slurmctld"), "-D", "-c", "-f", str(self.conf))
        spawn(_daemon("slurmd"), "-D", "-f", str(self.conf))
        while True:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc"):
                return self
            self._check(deadline, f"no idle node (sinfo: {out.stdout.strip() or out.stderr.strip()})")

    def _check(self, deadline: float, what: str) -> None:
        dead = [p.args[0] for p in self.procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "; ".join(f"{f.name}: {f.read_text(errors='replace')[-400:]}" for f in self.root.glob("*.log*"))
            self.stop()
            raise RuntimeError(f"single-node Slurm did not start: {what}; exited: {dead}; {logs}")
        time.sleep(0.2)

    def run(self, *cmd: str) -> str:
        """A Slurm client command against this cluster; its stdout."""
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=True).stdout

    def stop(self) -> None:
        """Cancel every job (their steps would outlive slurmd), then SIGTERM each daemon by PID
        (slurmd first) and SIGKILL what is left after 10 s."""
        if len(self.procs) == len(DAEMONS) and all(p.poll() is None for p in self.procs):
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                out = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True)
                if out.returncode != 0 or not out.stdout.strip():
                    break
                time.sleep(0.5)
        for p in reversed(self.procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        self._log.close()
