"""Worker runtimes that host envs for an rlay broker. Depend on ``rlay``, never on ``broker``."""

from workers.worker import Worker, worker_process

__all__ = ["Worker", "worker_process"]
