"""The runner fixtures of tests/runner, for the attacks that drive a runner directly."""

from tests.runner.conftest import runner, sandboxes

__all__ = ["runner", "sandboxes"]
