"""A private one-node Slurm cluster on localhost, for the tests.

Everything lives under one scratch folder: its own munge key and socket, its own ``slurm.conf``,
state, spool, pid and log files, and ports chosen free on 127.0.0.1. No system configuration is read
or written (``/etc/slurm``, ``/etc/munge`` and ``/run/munge`` are untouched), so a real cluster on the
same machine is never disturbed. Clients find the cluster through ``SLURM_CONF`` (see :attr:`env`).

Needs root (``slurmd`` launches the jobs) and Debian's ``slurmctld slurmd slurm-client munge``;
:func:`ensure_packages` installs them with apt-get when missing.

Example::

    with LocalCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env, check=True)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["LocalCluster", "ensure_packages", "missing_reason", "PACKAGES", "COMMANDS"]

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def _missing_commands() -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [c for c in COMMANDS if shutil.which(c, path=search) is None]


def ensure_packages(log: Path | None = None) -> None:
    """Install the Slurm and munge Debian packages when a command is missing (root and apt-get only)."""
    if not _missing_commands() or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        subprocess.run(["apt-get", "update", "-qq"], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                       stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        pass
    finally:
        if log:
            out.close()


def missing_reason() -> str | None:
    """Why a local cluster cannot be started here, or ``None`` when it can."""
    if os.name != "posix":
        return "Slurm needs a POSIX system"
    if os.geteuid() != 0:
        return "starting slurmd needs root (the test runs a private one-node cluster)"
    missing = _missing_commands()
    if missing:
        return (f"Slurm/munge commands not found: {', '.join(missing)} "
                f"(install with: apt-get install -y --no-install-recommends {' '.join(PACKAGES)})")
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(cmd: str) -> str:
    path = shutil.which(cmd, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if path is None:
        raise FileNotFoundError(f"{cmd} not found (apt-get install {' '.join(PACKAGES)})")
    return path


class LocalCluster:
    """Start munged, slurmctld and slurmd (node ``localhost``, 2 CPUs) under ``root``; stop them by PID.

    Args:
        root: scratch folder for keys, configuration, state and logs (created).
        cpus: CPUs of the node.
        memory_mb: ``RealMemory`` of the node.
        start_timeout: seconds to wait for the node to become idle.
    """

    def __init__(self, root: str | os.PathLike, *, cpus: int = 2, memory_mb: int = 2048, start_timeout: float = 60.0):
        if cpus < 1:
            raise ValueError(f"cpus must be >= 1, got {cpus}")
        if memory_mb < 64:
            raise ValueError(f"memory_mb must be >= 64, got {memory_mb}")
        self.root = Path(root).resolve()
        self.cpus = int(cpus)
        self.memory_mb = int(memory_mb)
        self.start_timeout = float(start_timeout)
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"

    # ---------------------------------------------------------------------------------------------
    @property
    def env(self) -> dict:
        """The environment a client (sbatch, squeue, make) needs to talk to this cluster."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        for var in list(env):  # never let a surrounding allocation leak into the test's jobs
            if var.startswith(("SLURM_JOB", "SLURM_ARRAY", "SBATCH_", "SALLOC_", "SQUEUE_")):
                env.pop(var)
        return env

    def _write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o755)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(128))
        os.chmod(key, 0o400)
        r = self.root
        self.conf.write_text("\n".join([
            "# private one-node test cluster (tests/slurm_cluster.py)",
            "ClusterName=sscildtest",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=300",
            "KillWait=5",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        try:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode} while starting the test cluster; "
                                   f"see {self.root / 'log'}:\n{self.logs_tail()}")

    def start(self) -> "LocalCluster":
        """Write the configuration, start the three daemons and wait for the node to be idle."""
        self._write_config()
        m = self.root / "munge"
        self._spawn("munged", [_which("munged"), "-F", "--force", "-S", str(self.munge_socket),
                               "--key-file", str(m / "munge.key"), "--pid-file", str(m / "munged.pid"),
                               "--seed-file", str(m / "munged.seed"), "--log-file", str(self.root / "log" / "munged.log")])
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not create {self.munge_socket}:\n{self.logs_tail()}")
            time.sleep(0.1)
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            proc = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%T"],
                                  capture_output=True, text=True, env=self.env)
            state = proc.stdout.strip()
            if proc.returncode == 0 and state.rstrip("*") == "idle":
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the test cluster's node is not idle after {self.start_timeout:.0f} s "
                           f"(state {state!r}):\n{self.logs_tail()}")

    def cancel_all(self, timeout: float = 20.0) -> None:
        """Cancel every job of this cluster and wait for them to end (their job steps outlive slurmd)."""
        ctld = self.procs.get("slurmctld")
        if ctld is None or ctld.poll() is not None:
            return
        try:
            subprocess.run([_which("scancel"), "--user", str(os.geteuid())], env=self.env, capture_output=True,
                           timeout=30)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                q = subprocess.run([_which("squeue"), "-h", "-o", "%i"], env=self.env, capture_output=True,
                                   text=True, timeout=30)
                if q.returncode != 0 or not q.stdout.strip():
                    return
                time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def stop(self) -> None:
        """Cancel the cluster's jobs, then stop the daemons this object started (by PID): TERM, then KILL."""
        self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()

    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
