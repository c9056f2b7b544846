"""Bundled problem files (one per problem; found by ``pinnctl.discovery``).

Also callable: ``pinnctl.problems()`` is ``pinnctl.api.problems``.
"""

from pinnctl import _callable_package

_callable_package(__name__, "problems")
