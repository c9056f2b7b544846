"""Bundled classical reference solvers, one module per problem (``pinnctl.reference.<name>``).

Also callable: ``pinnctl.reference("heat2d")`` is ``pinnctl.api.reference``.
"""

from pinnctl import _callable_package

_callable_package(__name__, "reference")
