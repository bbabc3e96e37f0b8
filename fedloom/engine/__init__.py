"""Ray-free local simulation engine behind Flower's own ``Grid`` interface."""

from fedloom.engine.local_grid import LocalGrid, run_local
from fedloom.engine.workers import available_cores, resolve_workers, shutdown_worker_pools

__all__ = ["LocalGrid", "available_cores", "resolve_workers", "run_local", "shutdown_worker_pools"]
