"""Job scripts and status parsers of every batch provider, without a scheduler.

The sample outputs below are written in the documented formats of each
scheduler's commands.  Slurm, Grid Engine, HTCondor and the Torque-style
layout are also exercised for real in test_real_schedulers.py.  LSF, Cobalt
and PBS Pro cannot run on this machine (none is packaged for Debian; LSF is
proprietary, Cobalt retired, and the Torque wrappers have no ``qstat -F
json``): for them, besides the parsers, a few tests put small fake commands
on PATH that print the documented output, to check the commands the
provider runs and how it reads their answers.  Those are mocks, and say so.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest

from htex.errors import ConfigurationError, ProviderError
from htex.launchers import SimpleLauncher
from htex.providers.base import JobState
from htex.providers.cluster import hhmmss, safe_job_name, walltime_seconds
from htex.providers.cobalt import CobaltProvider, parse_cobalt_qstat
from htex.providers.condor import CondorProvider, parse_condor_af
from htex.providers.gridengine import GridEngineProvider, parse_qacct, parse_qstat, sge_state
from htex.providers.lsf import LSFProvider, parse_bjobs
from htex.providers.pbspro import PBSProProvider, parse_qstat_json
from htex.providers.slurm import SlurmProvider, parse_sacct, parse_scontrol_exit_codes, parse_squeue, slurm_state
from htex.providers.torque import TorqueProvider, parse_torque_qstat

# ------------------------------------------------------------------ helpers


def test_walltime_forms() -> None:
    assert walltime_seconds("00:10:00") == 600
    assert walltime_seconds("1-02:00:00") == 26 * 3600
    assert walltime_seconds("05:30") == 330
    assert walltime_seconds("90") == 5400  # plain minutes
    assert hhmmss(26 * 3600 + 61) == "26:01:01"
    with pytest.raises(ConfigurationError):
        walltime_seconds("ten minutes")
    with pytest.raises(ConfigurationError):
        SlurmProvider(walltime="soon")


def test_safe_job_name() -> None:
    assert safe_job_name("htex.block-1") == "htex.block-1"
    assert safe_job_name("1 bad/name:x@y") == "j1_bad_name_x_y"
    assert len(safe_job_name("a" * 100, 15)) == 15


def test_block_limits_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        SlurmProvider(min_blocks=3, max_blocks=1)
    with pytest.raises(ConfigurationError):
        TorqueProvider(nodes_per_block=0)
    with pytest.raises(ConfigurationError, match="parallel environment"):
        GridEngineProvider(nodes_per_block=2)


def test_overrides_is_the_old_name_of_scheduler_options() -> None:
    with pytest.warns(DeprecationWarning):
        p = SlurmProvider(overrides="#SBATCH --comment=x")
    assert p.scheduler_options == "#SBATCH --comment=x"


def test_every_batch_provider_is_remote() -> None:
    for cls in (SlurmProvider, GridEngineProvider, CondorProvider, TorqueProvider, PBSProProvider, CobaltProvider):
        p = cls()
        assert p.remote is True
        assert 10 <= p.status_polling_interval <= 120
    assert LSFProvider().remote is True


# ------------------------------------------------------------------ job scripts


def _script(provider: Any, tmp_path: Any, command: str = "process_worker_pool.py --block 1") -> str:
    provider.script_dir = str(tmp_path)
    name, job = provider._new_job("htex.block-1")
    assert os.path.dirname(job.script) == str(tmp_path) and job.stdout.endswith(".stdout")
    env = provider.job_env(2) if isinstance(provider, SlurmProvider) else None
    return str(provider._job_script(provider_directives(provider, name, job), command, 2, env))


def provider_directives(p: Any, name: str, job: Any) -> list[str]:
    if isinstance(p, (SlurmProvider, GridEngineProvider)):
        return list(p.directives(name, job.stdout, job.stderr, 2))
    if isinstance(p, LSFProvider):
        return list(p.directives(name, job.stdout, job.stderr))
    if isinstance(p, TorqueProvider):
        return list(p.directives(name, 2))
    return []


def _order(text: str, *parts: str) -> None:
    """The parts appear in the text, in this order."""
    at = [text.index(p) for p in parts]
    assert at == sorted(at), text


def test_slurm_script(tmp_path: Any) -> None:
    p = SlurmProvider(partition="debug", account="proj", qos="low", constraint="haswell", nodes_per_block=2,
                      mem_per_node=4, cores_per_node=8, walltime="01:30:00", scheduler_options="#SBATCH --comment=mine",
                      worker_init="module load python")
    text = _script(p, tmp_path)
    assert text.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --nodes=2", "#SBATCH --time=01:30:00", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --partition=debug", "#SBATCH --account=proj", "#SBATCH --qos=low",
                 "#SBATCH --constraint=haswell", "#SBATCH --exclusive", "#SBATCH --mem=4g",
                 "#SBATCH --cpus-per-task=4", "export HTEX_CORES=4", "export HTEX_MEMORY_GB=4", "#SBATCH --output="):
        assert line in text
    # ours, then the user's directives (later ones win), then worker_init, then the launched command
    _order(text, "#SBATCH --nodes=2", "#SBATCH --comment=mine", "module load python", "process_worker_pool.py --block 1")
    assert SlurmProvider(exclusive=False).directives("n", "o", "e", 1).count("#SBATCH --exclusive") == 0


def test_gridengine_script(tmp_path: Any) -> None:
    p = GridEngineProvider(queue="all.q", pe="smp", nodes_per_block=2, cores_per_node=4, walltime="00:20:00",
                           scheduler_options="#$ -l mem_free=1G", worker_init="source env.sh")
    text = _script(p, tmp_path)
    for line in ("#$ -S /bin/bash", "#$ -cwd", "#$ -l h_rt=00:20:00", "#$ -q all.q", "#$ -pe smp 8"):
        assert line in text
    _order(text, "#$ -N ", "#$ -l mem_free=1G", "source env.sh", "process_worker_pool.py")


def test_torque_and_pbspro_scripts(tmp_path: Any) -> None:
    t = _script(TorqueProvider(queue="batch", account="acct", nodes_per_block=3, walltime="02:00:00",
                               scheduler_options="#PBS -l mem=2gb"), tmp_path)
    for line in ("#PBS -S /bin/bash", "#PBS -l nodes=3:ppn=2", "#PBS -l walltime=02:00:00", "#PBS -q batch", "#PBS -A acct"):
        assert line in t
    _order(t, "#PBS -N ", "#PBS -l mem=2gb", "process_worker_pool.py")
    p = _script(PBSProProvider(nodes_per_block=2, cpus_per_node=16, select_options="ngpus=1"), tmp_path)
    assert "#PBS -l select=2:ncpus=16:ngpus=1" in p and "#PBS -l place=scatter" in p
    assert "nodes=" not in p


def test_lsf_script(tmp_path: Any) -> None:
    text = _script(LSFProvider(project="BIO123", queue="batch", nodes_per_block=4, walltime="00:45:30"), tmp_path)
    for line in ("#BSUB -nnodes 4", "#BSUB -W 46", "#BSUB -P BIO123", "#BSUB -q batch", "#BSUB -o ", "#BSUB -e "):
        assert line in text
    by_cores = _script(LSFProvider(request_by_nodes=False, cores_per_block=64, cores_per_node=32), tmp_path)
    assert "#BSUB -n 64" in by_cores and '#BSUB -R "span[ptile=32]"' in by_cores
    with pytest.raises(ConfigurationError):
        LSFProvider(request_by_nodes=False)


def test_cobalt_submit_command() -> None:
    argv = CobaltProvider(nodes_per_block=8, walltime="01:00:30", queue="debug", account="ATPESC").submit_argv(
        "/s/job.sh", "/s/job.stdout", "/s/job.stderr")
    assert argv == ["qsub", "-n", "8", "-t", "61", "-o", "/s/job.stdout", "-e", "/s/job.stderr",
                    "-q", "debug", "-A", "ATPESC", "--mode", "script", "/s/job.sh"]
    assert "aprun" in CobaltProvider().launcher("cmd", 1, 8)  # Parsl's default launcher there


def test_condor_submit_description(tmp_path: Any) -> None:
    p = CondorProvider(nodes_per_block=3, cores_per_slot=2, mem_per_slot=1.5, environment={"A": "1"},
                       requirements='OpSys == "LINUX"', transfer_input_files=["in.txt"], walltime="00:01:00",
                       scheduler_options="+Custom = 1", project="proj", worker_init="source env.sh")
    sub = p.submit_description("/d/j.sh", "/d/j.stdout", "/d/j.stderr", "/d/j.log")
    for line in ("executable = /d/j.sh", "output = /d/j.stdout", "error = /d/j.stderr", "request_cpus = 2",
                 "request_memory = 1536", "environment = \"A='1'\"", 'requirements = OpSys == "LINUX"',
                 "should_transfer_files = YES", "transfer_input_files = in.txt", '+ProjectName = "proj"',
                 "periodic_remove = JobStatus == 2 && (time() - EnteredCurrentStatus) > 60", "+Custom = 1"):
        assert line in sub.splitlines()
    assert sub.rstrip().endswith("queue 3")
    # scheduler_options belong to the submit description, not to the job script
    p.script_dir = str(tmp_path)
    script = p._job_script([], "pool", 1, options="")
    assert "+Custom" not in script and "source env.sh" in script


# ------------------------------------------------------------------ Slurm parsers


def test_slurm_states() -> None:
    assert slurm_state("CANCELLED by 0") is JobState.CANCELLED
    assert slurm_state("CANCELLED+") is JobState.CANCELLED
    assert slurm_state("TIMEOUT") is JobState.TIMEOUT and slurm_state("TO") is JobState.TIMEOUT
    assert slurm_state("NODE_FAIL") is JobState.FAILED and slurm_state("OUT_OF_MEMORY") is JobState.FAILED
    assert slurm_state("CG") is JobState.RUNNING and slurm_state("CF") is JobState.PENDING
    assert slurm_state("PD", "JobHeldUser") is JobState.HELD
    assert slurm_state("PD", "Resources") is JobState.PENDING
    assert slurm_state("S") is JobState.HELD
    assert slurm_state("WEIRD") is JobState.UNKNOWN
    assert slurm_state("") is JobState.UNKNOWN


def test_parse_sacct() -> None:
    out = ("101|COMPLETED|0:0|None\n102|FAILED|3:0|NonZeroExitCode\n103|CANCELLED by 0|0:15|None\n"
           "104|TIMEOUT|0:0|TimeLimit\n105|PENDING|0:0|Priority\n106|RUNNING|0:0|None\n\n")
    found = parse_sacct(out)
    assert {k: v.state for k, v in found.items()} == {
        "101": JobState.COMPLETED, "102": JobState.FAILED, "103": JobState.CANCELLED,
        "104": JobState.TIMEOUT, "105": JobState.PENDING, "106": JobState.RUNNING,
    }
    assert found["102"].exit_code == 3 and found["103"].exit_code == -15 and found["105"].exit_code is None
    assert "NonZeroExitCode" in found["102"].message


def test_parse_scontrol_exit_codes() -> None:
    out = (
        "JobId=154 JobName=j.sh UserId=root(0) JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0 Comment=a=b\n"
        "JobId=155 JobName=k JobState=CANCELLED ExitCode=0:9\n"
        "JobId=156 JobState=PENDING ExitCode=\n"
    )
    assert parse_scontrol_exit_codes(out) == {"154": 3, "155": -9}


def test_parse_squeue() -> None:
    found = parse_squeue("7 R None\n8 PD (JobHeldUser)\n9 PD Resources\n10 CD None\n11 TO None\n")
    assert found["7"].state is JobState.RUNNING
    assert found["9"].state is JobState.PENDING and "Resources" in found["9"].message
    assert found["10"].state is JobState.COMPLETED and found["11"].state is JobState.TIMEOUT
    assert parse_squeue("") == {}


# ------------------------------------------------------------------ Grid Engine parsers

SGE_QSTAT = """\
job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID
-----------------------------------------------------------------------------------------------------------------
     21 0.55500 htex.block root         r     11/24/2026 16:40:00 all.q@localhost                    1
     22 0.55500 htex.block root         qw    11/24/2026 16:40:01                                    1
     23 0.00000 htex.block root         hqw   11/24/2026 16:40:02                                    1
     24 0.55500 htex.block root         Eqw   11/24/2026 16:40:03                                    1
     25 0.55500 htex.block root         dr    11/24/2026 16:40:04 all.q@localhost                    1
     26 0.55500 htex.block root         t     11/24/2026 16:40:05 all.q@localhost                    1
"""


def test_parse_sge_qstat() -> None:
    found = parse_qstat(SGE_QSTAT)
    assert {k: v.state for k, v in found.items()} == {
        "21": JobState.RUNNING, "22": JobState.PENDING, "23": JobState.HELD,
        "24": JobState.FAILED, "25": JobState.CANCELLED, "26": JobState.RUNNING,
    }
    assert sge_state("s") is JobState.HELD and sge_state("Rr") is JobState.RUNNING


def test_parse_qacct() -> None:
    ok = parse_qacct("==============================================================\nqname        all.q\n"
                     "jobnumber    3\nfailed       0    \nexit_status  0\n")
    assert ok is not None and ok.state is JobState.COMPLETED and ok.exit_code == 0
    bad = parse_qacct("jobnumber    4\nfailed       0    \nexit_status  3\n")
    assert bad is not None and bad.state is JobState.FAILED and bad.exit_code == 3
    nostart = parse_qacct("failed       26  : opening input/output file\nexit_status  0\n")
    assert nostart is not None and nostart.state is JobState.FAILED and "opening input/output" in nostart.message
    assert parse_qacct("error: job id 99 not found\n") is None


# ------------------------------------------------------------------ HTCondor parser


def test_parse_condor_af() -> None:
    out = (
        "31\t0\t2\tundefined\tundefined\tundefined\n"
        "31\t1\t1\tundefined\tundefined\tundefined\n"          # a block of two: one running -> running
        "32\t0\t4\t0\tundefined\tundefined\n"
        "33\t0\t4\t2\tundefined\tundefined\n"
        "34\t0\t5\tundefined\tundefined\tFailed to execute '/x': (errno=13: 'Permission denied')\n"
        "35\t0\t3\tundefined\tvia condor_rm (by user condorci)\tundefined\n"
        "36\t0\t3\tundefined\tThe job attribute PeriodicRemove expression '...' evaluated to TRUE\tundefined\n"
    )
    found = parse_condor_af(out)
    assert found["31"].state is JobState.RUNNING
    assert found["32"].state is JobState.COMPLETED and found["32"].exit_code == 0
    assert found["33"].state is JobState.FAILED and found["33"].exit_code == 2
    assert found["34"].state is JobState.HELD and "Permission denied" in found["34"].message
    assert found["35"].state is JobState.CANCELLED and "condor_rm" in found["35"].message
    assert found["36"].state is JobState.TIMEOUT


# ------------------------------------------------------------------ Torque parser

TORQUE_QSTAT = """\
Job ID                    Name             User            Time Use S Queue
------------------------- ---------------- --------------- -------- - -----
4807.sched-srv             htex.block-1     user1           00:35:39 R batch
4808.sched-srv             htex.block-2     user1                  0 Q batch
4809.sched-srv             htex.block-3     user1           00:00:01 C batch
4810.sched-srv             htex.block-4     user1                  0 H batch
"""


def test_parse_torque_qstat() -> None:
    found = parse_torque_qstat(TORQUE_QSTAT)
    assert {k: v.state for k, v in found.items()} == {
        "4807": JobState.RUNNING, "4808": JobState.PENDING, "4809": JobState.COMPLETED, "4810": JobState.HELD,
    }


# ------------------------------------------------------------------ PBS Pro parser

# The layout of `qstat -f -F json` as documented by PBS Pro (timestamp, pbs_version,
# pbs_server, then "Jobs" keyed by job id with the full attributes).
PBSPRO_JSON = """{
    "timestamp":1479277336,
    "pbs_version":"19.1.3",
    "pbs_server":"pbs01",
    "Jobs":{
        "1001.pbs01":{"Job_Name":"htex.block-1","Job_Owner":"user1@login1","job_state":"R","queue":"workq",
                      "Resource_List":{"ncpus":16,"nodect":1,"select":"1:ncpus=16","walltime":"00:30:00"}},
        "1002.pbs01":{"Job_Name":"htex.block-2","job_state":"Q","queue":"workq",
                      "comment":"Not Running: Insufficient amount of resource: ncpus"},
        "1003.pbs01":{"Job_Name":"htex.block-3","job_state":"F","Exit_status":0},
        "1004.pbs01":{"Job_Name":"htex.block-4","job_state":"F","Exit_status":1},
        "1005.pbs01":{"Job_Name":"htex.block-5","job_state":"F","Exit_status":-29},
        "1006.pbs01":{"Job_Name":"htex.block-6","job_state":"H"},
        "1007.pbs01":{"Job_Name":"htex.block-7","job_state":"E"}
    }
}"""


def test_parse_pbspro_json() -> None:
    found = parse_qstat_json(PBSPRO_JSON)
    assert {k: v.state for k, v in found.items()} == {
        "1001": JobState.RUNNING, "1002": JobState.PENDING, "1003": JobState.COMPLETED, "1004": JobState.FAILED,
        "1005": JobState.TIMEOUT, "1006": JobState.HELD, "1007": JobState.RUNNING,
    }
    assert "Insufficient amount" in found["1002"].message
    assert found["1004"].exit_code == 1 and found["1005"].exit_code == -29
    assert parse_qstat_json("") == {}
    with pytest.raises(ProviderError):
        parse_qstat_json("qstat: illegal -F value")


# ------------------------------------------------------------------ LSF and Cobalt parsers


def test_parse_bjobs() -> None:
    # bjobs -a -noheader -o "jobid stat exit_code delimiter='|'"
    found = parse_bjobs("5501|RUN|-\n5502|PEND|-\n5503|DONE|-\n5504|EXIT|2\n5505|PSUSP|-\n"
                        "Job <5599> is not found\n")
    assert {k: v.state for k, v in found.items()} == {
        "5501": JobState.RUNNING, "5502": JobState.PENDING, "5503": JobState.COMPLETED,
        "5504": JobState.FAILED, "5505": JobState.HELD,
    }
    assert found["5503"].exit_code == 0 and found["5504"].exit_code == 2


COBALT_QSTAT = """\
JobID   User     WallTime  Nodes  State      Location
=======================================================
325634  user1    00:30:00  128    running    3824-3951
325635  user1    00:30:00  8      queued     None
325636  user1    00:10:00  8      user_hold  None
325637  user1    00:10:00  8      exiting    3952-3959
"""


def test_parse_cobalt_qstat() -> None:
    found = parse_cobalt_qstat(COBALT_QSTAT)
    assert {k: v.state for k, v in found.items()} == {
        "325634": JobState.RUNNING, "325635": JobState.PENDING, "325636": JobState.HELD, "325637": JobState.COMPLETED,
    }


# ------------------------------------------------------------------ fake commands (mocks: no such scheduler here)


def _fake_bin(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, commands: dict[str, str]) -> str:
    """Put small shell scripts on PATH; each records its argv (and stdin) in calls.log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    for name, body in commands.items():
        path = bindir / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> {log}\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return str(log)


@pytest.mark.timeout(30)
def test_lsf_provider_with_fake_commands(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mock: LSF cannot run here.  The fake bsub/bjobs/bkill print LSF's documented answers."""
    log = _fake_bin(tmp_path, monkeypatch, {
        "bsub": 'cat > /dev/null; echo "Job <5501> is submitted to queue <batch>."',
        "bjobs": 'echo "5501|RUN|-"; echo "Job <5599> is not found" >&2; exit 255',
        "bkill": 'echo "Job <$1> is being terminated"',
    })
    p = LSFProvider(bsub_redirection=True, launcher=SimpleLauncher())
    p.script_dir = str(tmp_path / "scripts")
    job = p.submit("pool", 1)
    assert job == "5501"
    assert [s.state for s in p.status(["5501", "5599"])] == [JobState.RUNNING, JobState.MISSING]
    assert p.cancel(["5501"]) == [True]
    with open(log) as f:
        calls = f.read()
    assert "bsub \n" in calls  # bsub < script: the script came on stdin
    assert "bjobs -a -noheader -o jobid stat exit_code delimiter='|' 5501 5599" in calls


@pytest.mark.timeout(30)
def test_lsf_refusal_quotes_bsub(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mock: LSF cannot run here.  The fake bsub refuses as LSF documents it."""
    _fake_bin(tmp_path, monkeypatch, {"bsub": 'echo "batch: No such queue. Job not submitted." >&2; exit 255'})
    p = LSFProvider(queue="batch")
    p.script_dir = str(tmp_path)
    with pytest.raises(ProviderError, match=r"No such queue\. Job not submitted"):
        p.submit("pool", 1)


@pytest.mark.timeout(30)
def test_cobalt_provider_with_fake_commands(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mock: Cobalt cannot run here.  The fake qsub prints a queue-routing note before the id, as on Theta."""
    _fake_bin(tmp_path, monkeypatch, {
        "qsub": 'echo "Job routed to queue \\"debug-cache-quad\\"."; echo "325634"',
        "qstat": f"cat <<'EOF'\n{COBALT_QSTAT}EOF",
        "qdel": 'echo "Deleted Jobs"',
    })
    p = CobaltProvider(launcher=SimpleLauncher())
    p.script_dir = str(tmp_path)
    assert p.submit("pool", 1) == "325634"
    assert p.status(["325634"])[0].state is JobState.RUNNING
    assert p.cancel(["325634"]) == [True]


@pytest.mark.timeout(30)
def test_pbspro_provider_with_fake_commands(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mock: no PBS Pro server here.  The fake qstat prints the documented JSON (and the
    "Unknown Job Id" error PBS gives for a job it no longer knows)."""
    log = _fake_bin(tmp_path, monkeypatch, {
        "qsub": 'echo "1001.pbs01"',
        "qstat": f"cat <<'EOF'\n{PBSPRO_JSON}\nEOF\necho 'qstat: Unknown Job Id 999.pbs01' >&2; exit 153",
        "qdel": "exit 0",
    })
    p = PBSProProvider(launcher=SimpleLauncher())
    p.script_dir = str(tmp_path)
    job = p.submit("pool", 1)
    assert job == "1001.pbs01"
    assert [s.state for s in p.status([job, "999.pbs01"])] == [JobState.RUNNING, JobState.MISSING]
    with open(log) as f:
        assert "qstat -f -F json -x 1001.pbs01 999.pbs01" in f.read()


@pytest.mark.timeout(30)
def test_missing_or_hanging_scheduler_command_is_a_provider_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bsub anywhere
    p = LSFProvider()
    p.script_dir = str(tmp_path)
    with pytest.raises(ProviderError, match="bsub not found"):
        p.submit("pool", 1)
    _fake_bin(tmp_path, monkeypatch, {"squeue": "exec /bin/sleep 30", "sacct": "exit 1"})
    s = SlurmProvider(cmd_timeout=1)
    st = s.status(["42"])[0]
    assert st.state is JobState.UNKNOWN and "cmd_timeout=1" in st.message
