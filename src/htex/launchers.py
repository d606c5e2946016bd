"""Launchers: the worker command -> the command that starts it on every node of a block.

Each launcher is a small callable ``(command, tasks_per_node, nodes_per_block) -> str``,
a pure function of its arguments (and of its own options), so it is tested as one.
The result runs inside the block's job script, on its first node.
"""

from __future__ import annotations


class Launcher:
    """Base: subclasses override ``__call__``."""

    def __init__(self, debug: bool = True) -> None:
        self.debug = debug

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        raise NotImplementedError

    def _debug(self) -> str:
        return "set -x\n" if self.debug else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SimpleLauncher(Launcher):
    """Runs the command once, as it is: for a block of one node, one pool."""

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        return command


class SingleNodeLauncher(Launcher):
    """Runs ``tasks_per_node`` copies of the command on this node and waits for them all.

    The block fails if any copy fails when ``fail_on_any`` is set, otherwise only if all do.
    """

    def __init__(self, debug: bool = True, fail_on_any: bool = False) -> None:
        super().__init__(debug)
        self.fail_on_any = fail_on_any

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        if tasks_per_node == 1:
            # One copy: run it in the foreground, so signals and exit codes pass straight through.
            return f"export CORES=$(getconf _NPROCESSORS_ONLN)\n{command}\n"
        check = "[ $failed -eq 0 ]" if self.fail_on_any else f"[ $failed -lt {tasks_per_node} ]"
        # The command may be several lines or a compound one ("a; b"): wrap it in a
        # function so that "&" puts all of it, not only its last part, in the background.
        return (
            f"{self._debug()}export CORES=$(getconf _NPROCESSORS_ONLN)\n"
            f"htex_cmd() {{\n{command}\n}}\n"
            f"pids=''\n"
            f"for i in $(seq 1 {tasks_per_node}); do\n"
            f"  htex_cmd &\n"
            f"  pids=\"$pids $!\"\n"
            f"done\n"
            f"failed=0\n"
            f"for p in $pids; do wait $p || failed=$((failed+1)); done\n"
            f"{check}\n"
        )


# The file the command is written to: unique per job (whatever the scheduler's job id
# variable is) and per job shell ($$), since several blocks share one script_dir.
# It is expanded by the job's shell on the block's first node, so the other nodes
# get the same path (script_dir is on a shared file system).
_CMD_FILE = "cmd_${SLURM_JOB_ID}${PBS_JOBID}${JOB_ID}${LSB_JOBID}${COBALT_JOBID}_$$.sh"
# Where such files go: the directory the job was submitted from, which the providers
# make script_dir.  Most schedulers start the job there; PBS and Torque start it in
# $HOME and say where it was submitted from in PBS_O_WORKDIR.
_JOB_DIR = "${PBS_O_WORKDIR:-$PWD}"


def _script_launcher(wrap: str, command: str, debug: str, bash: str = "/bin/bash") -> str:
    # Write the command into a small script so that quoting survives srun/mpiexec/aprun.
    return (
        f"{debug}CMD_FILE=\"{_JOB_DIR}/{_CMD_FILE}\"\n"
        f"cat << 'HTEX_EOF' > \"$CMD_FILE\"\n"
        f"{command}\n"
        f"HTEX_EOF\n"
        f"chmod a+x \"$CMD_FILE\"\n"
        f"{wrap} {bash} \"$CMD_FILE\"\n"
    )


class _RunnerLauncher(Launcher):
    """Base of the launchers that start the command through a parallel runner (srun, aprun, mpiexec, ...).

    Each says only how its runner is called (``runner``); the user's
    ``overrides`` follow it, and the command goes in a script file (see
    _script_launcher).
    """

    def __init__(self, debug: bool = True, overrides: str = "") -> None:
        super().__init__(debug)
        self.overrides = overrides

    def runner(self, tasks_per_node: int, nodes_per_block: int) -> str:
        raise NotImplementedError

    def shell(self) -> str:
        """The shell the runner starts the command file with, on each node."""
        return "/bin/bash"

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        wrap = f"{self.runner(tasks_per_node, nodes_per_block)} {self.overrides}".rstrip()
        return _script_launcher(wrap, command, self._debug(), self.shell())


class SrunLauncher(_RunnerLauncher):
    """One pool per node (times tasks_per_node) with Slurm's srun."""

    def runner(self, tasks_per_node: int, nodes_per_block: int) -> str:
        return f"srun --ntasks={tasks_per_node * nodes_per_block} --ntasks-per-node={tasks_per_node} -l"


class SrunMPILauncher(_RunnerLauncher):
    """For MPI applications: one pool on the block's first node, with the nodes left for mpirun."""

    def runner(self, tasks_per_node: int, nodes_per_block: int) -> str:
        return "srun --ntasks=1 --nodes=1 --exclusive"


class AprunLauncher(_RunnerLauncher):
    """Cray's aprun: -n total tasks, -N per node."""

    def runner(self, tasks_per_node: int, nodes_per_block: int) -> str:
        return f"aprun -n {tasks_per_node * nodes_per_block} -N {tasks_per_node}"


class MpiExecLauncher(_RunnerLauncher):
    """mpiexec (MPICH/Hydra): one copy per slot of the job's host list."""

    def __init__(self, debug: bool = True, bind_cmd: str = "--bind-to", overrides: str = "") -> None:
        super().__init__(debug, overrides)
        self.bind_cmd = bind_cmd

    def runner(self, tasks_per_node: int, nodes_per_block: int) -> str:
        return f"mpiexec -n {tasks_per_node * nodes_per_block} -ppn {tasks_per_node} {self.bind_cmd} none"


class MpiRunLauncher(_RunnerLauncher):
    """Open MPI's mpirun."""

    def __init__(self, debug: bool = True, bash_location: str = "/bin/bash", overrides: str = "") -> None:
        super().__init__(debug, overrides)
        self.bash_location = bash_location

    def shell(self) -> str:
        return self.bash_location

    def runner(self, tasks_per_node: int, nodes_per_block: int) -> str:
        return f"mpirun -np {tasks_per_node * nodes_per_block}"


class JsrunLauncher(_RunnerLauncher):
    """IBM's jsrun (Summit-class machines): one resource set per node."""

    def runner(self, tasks_per_node: int, nodes_per_block: int) -> str:
        return f"jsrun -n {tasks_per_node * nodes_per_block} -r {tasks_per_node}"


# The job's nodes, one per line, in $HTEX_HOSTS: each scheduler names them its own way.
HOSTS_FILE = """HTEX_HOSTS="${PBS_O_WORKDIR:-$PWD}/hosts_${SLURM_JOB_ID}${PBS_JOBID}${JOB_ID}${LSB_JOBID}${COBALT_JOBID}_$$"
if [ -n "${PBS_NODEFILE:-}" ]; then sort -u "$PBS_NODEFILE" > "$HTEX_HOSTS"
elif [ -n "${SLURM_JOB_NODELIST:-}" ]; then scontrol show hostnames "$SLURM_JOB_NODELIST" > "$HTEX_HOSTS"
elif [ -n "${PE_HOSTFILE:-}" ]; then awk '{print $1}' "$PE_HOSTFILE" > "$HTEX_HOSTS"
elif [ -n "${LSB_HOSTS:-}" ]; then echo "$LSB_HOSTS" | tr ' ' '\\n' | sort -u > "$HTEX_HOSTS"
else hostname > "$HTEX_HOSTS"
fi
"""


class GnuParallelLauncher(Launcher):
    """GNU parallel over ssh to the job's nodes: tasks_per_node copies per node."""

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        total = tasks_per_node * nodes_per_block
        run = (
            f"parallel --env _ --joblog joblog_$$ --sshloginfile \"$HTEX_HOSTS\" -j {tasks_per_node} "
            "--halt never"
        )
        # The command file is run by parallel on each node, with the copy number as its argument.
        return HOSTS_FILE + _script_launcher(run, command, self._debug()).rstrip("\n") + f" ::: $(seq 1 {total})\n"


class WrappedLauncher(Launcher):
    """Prepends a fixed command (e.g. a container runtime) to the worker command."""

    def __init__(self, prepend: str, debug: bool = True) -> None:
        super().__init__(debug)
        self.prepend = prepend

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        return f"{self.prepend} {command}"


__all__ = [
    "AprunLauncher",
    "GnuParallelLauncher",
    "JsrunLauncher",
    "Launcher",
    "MpiExecLauncher",
    "MpiRunLauncher",
    "SimpleLauncher",
    "SingleNodeLauncher",
    "SrunLauncher",
    "SrunMPILauncher",
    "WrappedLauncher",
]
