"""JSON Schema's ``integer``: any number with no fraction, ``8.0`` as well as ``8``.

Both faces take an integer argument so, since a client's JSON encoder (or a model writing
tool calls) may write one with a fraction of zero; a bool, a string or ``8.5`` stays refused.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Strict

__all__ = ["WholeNumber", "whole_number"]


def whole_number(value: object) -> object:
    """``value`` as an int when it is a float of no fraction, else as given, for the strict
    integer check that follows to judge."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(whole_number), Strict()]
"""An integer field that takes ``8.0`` as ``8`` and refuses ``true``, ``"8"`` and ``8.5``."""
