"""Fixtures of the scheduler tests: ``jobs`` (each real scheduler), ``slurm_jobs`` and ``torque_jobs``.

They live in sched_helpers.py (importable by the test modules); importing them
here makes pytest see them.  The leak check is tests/conftest.py's: it also
sees pools that a scheduler started, through their --logdir.
"""

from sched_helpers import jobs, slurm_jobs, torque_jobs

__all__ = ["jobs", "slurm_jobs", "torque_jobs"]
