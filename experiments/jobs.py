"""The job runner of the experiments: recipe commands as subprocesses, each
with its output in a log file, a timeout that ends the process together
with every process it started (torchrun workers, data-loader workers), and
the tail of the log for error reports.

The experiments are run from the repository root as
``python experiments/<name>.py ...``; they import this module as ``jobs``.

Author
------
speechbrain-mamba developers
"""

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

#: The repository checkout the experiments belong to (recipes are read
#: from ``REPO / "recipes"``).
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    """One command to run, and its outcome once run.

    Arguments
    ---------
    cmd : sequence of str
        The command.
    log : pathlib.Path
        File that receives stdout and stderr (overwritten; its folder is
        created).
    timeout_s : float
        Seconds after which the command and its processes are ended.
    cwd : pathlib.Path, optional
        Working folder (default: the current one).
    env : dict, optional
        Environment (default: :func:`repo_env`).
    name : str
        Name used in log messages.

    Attributes
    ----------
    returncode : int or None
        Exit status once finished (None before, or after a timeout).
    timed_out : bool
        The command ran past ``timeout_s`` and was ended.
    seconds : float or None
        Wall time of the command.
    started : float or None
        ``time.time()`` when the command started (None before).
    """

    cmd: Sequence[str]
    log: Path
    timeout_s: float
    cwd: Optional[Path] = None
    env: Optional[dict] = None
    name: str = ""
    returncode: Optional[int] = field(default=None, init=False)
    timed_out: bool = field(default=False, init=False)
    seconds: Optional[float] = field(default=None, init=False)
    started: Optional[float] = field(default=None, init=False)

    @property
    def status(self):
        """Exit status, or ``"timeout"``."""
        return "timeout" if self.timed_out else self.returncode


def repo_env(**values: str) -> dict:
    """The environment of a job: this one, with the repository first on
    ``PYTHONPATH`` (recipes import the checkout's package), unbuffered
    Python output (logs are read while jobs run), and ``values`` set.

    Arguments
    ---------
    **values : str
        Variables to set (e.g. ``OMP_NUM_THREADS="2"``).

    Returns
    -------
    dict

    Example
    -------
    >>> env = repo_env(OMP_NUM_THREADS="3")
    >>> env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    True
    >>> env["OMP_NUM_THREADS"], env["PYTHONUNBUFFERED"]
    ('3', '1')
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


def end_process_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Terminates the process group led by ``proc`` (started with
    ``start_new_session=True``), waits up to ``grace_s`` seconds, then
    kills what is left of it.

    Arguments
    ---------
    proc : subprocess.Popen
        The group leader.
    grace_s : float
        Seconds between SIGTERM and SIGKILL.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_jobs(
    jobs: Iterable[Job],
    parallel: bool = False,
    poll_s: float = 0.2,
    on_poll: Optional[Callable[[], None]] = None,
) -> None:
    """Runs jobs one after the other, or all at once with ``parallel``;
    sets each job's ``returncode`` / ``timed_out`` and ``seconds``.

    Each job runs in its own process group, so that a job past its timeout
    is ended with every process it started.

    Arguments
    ---------
    jobs : iterable of Job
        The jobs.
    parallel : bool
        Start every job at once.
    poll_s : float
        Seconds between checks of the running jobs.
    on_poll : callable, optional
        Called after each wait, while jobs run (e.g. to read their logs),
        and once more when all have ended.

    Example
    -------
    >>> import sys
    >>> tmp = Path(getfixture("tmpdir"))
    >>> ok = Job([sys.executable, "-c", "print('hi')"], tmp / "ok.txt", 60)
    >>> hangs = Job([sys.executable, "-c", "import time; time.sleep(60)"],
    ...             tmp / "hangs.txt", 0.5)
    >>> run_jobs([ok, hangs], parallel=True)
    >>> ok.status, (tmp / "ok.txt").read_text(), hangs.status
    (0, 'hi\\n', 'timeout')
    >>> hangs.seconds < 30
    True
    >>> polls = []
    >>> run_jobs([Job([sys.executable, "-c", "pass"], tmp / "p.txt", 60)],
    ...          on_poll=lambda: polls.append(1))
    >>> len(polls) >= 2
    True
    """
    pending = list(jobs)
    running: list = []
    while pending or running:
        while pending and (parallel or not running):
            job = pending.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            log = open(job.log, "w", encoding="utf-8")
            proc = subprocess.Popen(
                list(job.cmd),
                cwd=job.cwd,
                env=repo_env() if job.env is None else job.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            job.started = time.time()
            running.append((job, proc, log, time.monotonic()))
        time.sleep(poll_s)
        if on_poll is not None:
            on_poll()
        still = []
        for job, proc, log, start in running:
            elapsed = time.monotonic() - start
            code = proc.poll()
            if code is None and elapsed > job.timeout_s:
                end_process_group(proc)
                job.timed_out = True
            elif code is None:
                still.append((job, proc, log, start))
                continue
            else:
                job.returncode = code
            log.close()
            job.seconds = round(time.monotonic() - start, 1)
        running = still
    if on_poll is not None:
        on_poll()


def run_job(job: Job) -> Job:
    """Runs one job (see :func:`run_jobs`).

    Arguments
    ---------
    job : Job
        The job.

    Returns
    -------
    Job
        The same job, finished.
    """
    run_jobs([job])
    return job


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file (empty when there is none).

    Arguments
    ---------
    path : pathlib.Path
        Log file.
    lines : int
        How many lines.

    Returns
    -------
    str

    Example
    -------
    >>> log = Path(getfixture("tmpdir")) / "log.txt"
    >>> _ = log.write_text("a\\nb\\nc\\n")
    >>> log_tail(log, 2), log_tail(log.parent / "none.txt")
    ('b\\nc', '')
    """
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def error_line(text: str) -> str:
    """The last exception line of a log (or its last non-empty line).

    Arguments
    ---------
    text : str
        Log text.

    Returns
    -------
    str

    Example
    -------
    >>> error_line("Traceback:\\n  x\\nValueError: bad\\nexiting\\n")
    'ValueError: bad'
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line):
            return line
    return lines[-1] if lines else ""
