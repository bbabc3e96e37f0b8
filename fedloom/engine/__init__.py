"""Ray-free local simulation engine behind Flower's own ``Grid`` interface."""

from fedloom.engine.local_grid import LocalGrid, run_local

__all__ = ["LocalGrid", "run_local"]
