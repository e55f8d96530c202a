"""Hypothesis example counts that follow the profile (HYPOTHESIS_PROFILE, see
tests/conftest.py): a test that asks for more examples than the default gets them under
the ``ci`` profile, and as many fewer under ``fast`` as every other test does."""

from __future__ import annotations

from hypothesis import settings

CI_EXAMPLES = 100
"""max_examples of the ``ci`` profile (hypothesis' default)."""


def examples(at_ci: int) -> int:
    """*at_ci* under the ``ci`` profile, scaled like the loaded profile's default (a
    quarter under ``fast``), at least 10."""
    loaded = settings.default
    per_test = CI_EXAMPLES if loaded is None else loaded.max_examples
    return max(10, at_ci * per_test // CI_EXAMPLES)
