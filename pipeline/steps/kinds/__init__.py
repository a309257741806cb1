"""The built-in step kinds, one module each (importing this package registers them)."""

from pipeline.steps.kinds import base, forget, rollback, update  # noqa: F401  (registers the kinds)
