"""Where trials run: in the search process, in local worker processes, or as Ray tasks (a cluster
when `ray.init` reaches one; Ray is optional: `pip install 'mmcompress[ray]'`)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from mmcompress.core.extras import require
from mmcompress.errors import ConfigError

BACKENDS = ("process", "ray")


class Workers:
    """submit(fn, *args) -> handle; result(handle) -> value; close().

    Example:
        >>> workers = Workers("process", jobs=2)
        >>> workers.result(workers.submit(pow, 2, 10))
        1024
    """

    def __init__(self, backend: str = "process", jobs: int = 1) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.backend, self.jobs = backend, jobs
        self.pool = None
        self.ray = None
        if backend == "ray":
            ray = require("ray", "ray", "backend 'ray'")
            if not ray.is_initialized():  # joins a cluster given by RAY_ADDRESS, else starts a local one
                ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            self.ray = ray
            self._remote: dict[Callable, Any] = {}
        elif jobs > 1:
            self.pool = ProcessPoolExecutor(max_workers=jobs)

    def share(self, value: Any) -> Any:
        """Put a large argument (model, data) once where the workers read it (Ray object store)."""
        return self.ray.put(value) if self.ray else value

    def submit(self, fn: Callable, *args: Any) -> Any:
        if self.ray:
            remote = self._remote.setdefault(fn, self.ray.remote(num_cpus=1)(fn))
            return remote.remote(*args)
        return self.pool.submit(fn, *args) if self.pool else fn(*args)

    def result(self, handle: Any) -> Any:
        if self.ray:
            return self.ray.get(handle)
        return handle.result() if self.pool else handle

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()
