"""Every launcher of htex.launchers: a pure function (command, tasks_per_node, nodes_per_block) -> str.

The text of SingleNodeLauncher and of the script-writing launchers is also run
with bash here (with the MPI runner replaced by a stand-in where none exists),
since a launcher that renders but does not run is of no use.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from htex.launchers import (
    AprunLauncher,
    GnuParallelLauncher,
    JsrunLauncher,
    Launcher,
    MpiExecLauncher,
    MpiRunLauncher,
    SimpleLauncher,
    SingleNodeLauncher,
    SrunLauncher,
    SrunMPILauncher,
    WrappedLauncher,
)

CMD = "process_worker_pool.py --block_id 3 -a 10.0.0.1"


def bash(script: str, cwd: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=20,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_base_launcher_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        Launcher()(CMD, 1, 1)


def test_simple_launcher_returns_the_command() -> None:
    assert SimpleLauncher()(CMD, 4, 2) == CMD


def test_wrapped_launcher_prepends() -> None:
    assert WrappedLauncher("apptainer exec img.sif")(CMD, 1, 1) == f"apptainer exec img.sif {CMD}"


def test_launchers_are_pure() -> None:
    for launcher in (SingleNodeLauncher(), SrunLauncher(), AprunLauncher(), MpiExecLauncher(), MpiRunLauncher(),
                     JsrunLauncher(), SrunMPILauncher(), GnuParallelLauncher(), SimpleLauncher()):
        assert launcher(CMD, 2, 3) == launcher(CMD, 2, 3)


def test_single_node_one_task_runs_in_the_foreground() -> None:
    text = SingleNodeLauncher()(CMD, 1, 1)
    assert text.rstrip().endswith(CMD) and "&" not in text


@pytest.mark.timeout(30)
def test_single_node_runs_n_copies_of_a_compound_command(tmp_path: Any) -> None:
    # "a; b" must run whole in each copy, not "a" once and "b" in the background
    text = SingleNodeLauncher(debug=False)("echo start >> out; echo end >> out", 3, 1)
    proc = bash(text, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out").read_text().split()
    assert lines.count("start") == 3 and lines.count("end") == 3


ONE_OF_TWO_FAILS = "mkdir won 2>/dev/null"  # only the first copy to create the directory succeeds


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("fail_on_any", "command", "ok"), [
    (False, ONE_OF_TWO_FAILS, True),   # by default a block fails only if every copy does
    (False, "false", False),
    (True, ONE_OF_TWO_FAILS, False),   # fail_on_any: one failed copy fails the block
    (True, "true", True),
])
def test_single_node_failure_rule(tmp_path: Any, fail_on_any: bool, command: str, ok: bool) -> None:
    proc = bash(SingleNodeLauncher(debug=False, fail_on_any=fail_on_any)(command, 2, 1), tmp_path)
    assert (proc.returncode == 0) is ok, proc.stderr


def test_single_node_debug_switch() -> None:
    assert SingleNodeLauncher(debug=True)(CMD, 2, 1).startswith("set -x\n")
    assert not SingleNodeLauncher(debug=False)(CMD, 2, 1).startswith("set -x")


@pytest.mark.parametrize(("launcher", "line"), [
    (SrunLauncher(), "srun --ntasks=6 --ntasks-per-node=2 -l /bin/bash"),
    (SrunLauncher(overrides="--cpu-bind=none"), "srun --ntasks=6 --ntasks-per-node=2 -l --cpu-bind=none /bin/bash"),
    (SrunMPILauncher(), "srun --ntasks=1 --nodes=1 --exclusive /bin/bash"),
    (AprunLauncher(overrides="-cc depth"), "aprun -n 6 -N 2 -cc depth /bin/bash"),
    (MpiExecLauncher(), "mpiexec -n 6 -ppn 2 --bind-to none /bin/bash"),
    (MpiExecLauncher(bind_cmd="--cpu-bind"), "mpiexec -n 6 -ppn 2 --cpu-bind none /bin/bash"),
    (MpiRunLauncher(bash_location="/usr/local/bin/bash"), "mpirun -np 6 /usr/local/bin/bash"),
    (JsrunLauncher(), "jsrun -n 6 -r 2 /bin/bash"),
])
def test_script_launchers_command_line(launcher: Launcher, line: str) -> None:
    text = launcher(CMD, 2, 3)
    last = text.rstrip("\n").splitlines()[-1]
    assert last == f'{line} "$CMD_FILE"'
    # the command is written verbatim into the file the runner executes
    assert f"<< 'HTEX_EOF' > \"$CMD_FILE\"\n{CMD}\nHTEX_EOF\n" in text


@pytest.mark.timeout(30)
def test_script_launcher_file_is_per_job_and_runs(tmp_path: Any) -> None:
    # a stand-in "aprun" runs its command once per task, as the real one would on each node
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "aprun").write_text('#!/bin/bash\nn=$2; shift 4; for i in $(seq 1 $n); do "$@" || exit 1; done\n')
    (fake / "aprun").chmod(0o755)
    text = AprunLauncher(debug=False)('echo "task says $1 \'quoted\'" >> out', 2, 2)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "COBALT_JOBID": "77"}
    proc = bash(text, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").read_text().splitlines() == ["task says  'quoted'"] * 4
    files = [p.name for p in tmp_path.glob("cmd_*.sh")]
    assert len(files) == 1 and files[0].startswith("cmd_77_")


def test_two_blocks_in_one_directory_do_not_share_a_command_file() -> None:
    # the file name holds the job id of every scheduler htex supports, and the job shell's pid
    text = SrunLauncher()(CMD, 1, 1)
    for var in ("SLURM_JOB_ID", "PBS_JOBID", "JOB_ID", "LSB_JOBID", "COBALT_JOBID", "$$"):
        assert var in text.splitlines()[1]


def test_gnu_parallel_launcher() -> None:
    text = GnuParallelLauncher(debug=False)(CMD, 4, 2)
    last = text.rstrip("\n").splitlines()[-1]
    assert last.startswith("parallel ") and "-j 4" in last and last.endswith("::: $(seq 1 8)")
    assert '--sshloginfile "$HTEX_HOSTS"' in last and last.count("/bin/bash") == 1
    # the command file is written, but not run directly
    assert sum(1 for ln in text.splitlines() if "$CMD_FILE" in ln and "/bin/bash" in ln) == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("env", "content"), [
    ({"PE_HOSTFILE": "pe"}, "n1 4 all.q@n1 UNDEFINED\nn2 4 all.q@n2 UNDEFINED\n"),  # Grid Engine's format
    ({"PBS_NODEFILE": "pbs"}, "n1\nn1\nn2\nn2\n"),  # one line per core
    ({"LSB_HOSTS": "n1 n1 n2"}, None),
])
def test_gnu_parallel_host_list_from_each_scheduler(tmp_path: Any, env: dict[str, str], content: str | None) -> None:
    from htex.launchers import HOSTS_FILE

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PBS_", "SLURM_", "PE_", "LSB_"))}
    for key, value in env.items():
        if content is not None:
            (tmp_path / value).write_text(content)
            value = str(tmp_path / value)
        environ[key] = value
    script = HOSTS_FILE + 'cat "$HTEX_HOSTS"\n'
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=environ, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["n1", "n2"]
