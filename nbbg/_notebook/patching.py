"""Set an attribute now, put the old one back later: how the notebook layer stays removable.

``%unload_ext nbbg`` must leave Dash, ``jupyter_dash`` and every manager as
they were, so each change the notebook layer makes to an object it does not
own goes through :func:`patch_attribute` and is undone by calling what it
returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_ABSENT = object()


def patch_attribute(owner: Any, name: str, value: Any) -> Callable[[], None]:
    """Set ``owner.name = value``; the returned function restores the previous state.

    An attribute that only came from the class (a method, a class default) is
    restored by deleting the instance attribute, so later changes to the class
    show through again.
    """
    namespace = vars(owner) if hasattr(owner, "__dict__") else {}
    previous = namespace.get(name, _ABSENT)
    setattr(owner, name, value)

    def restore() -> None:
        if previous is _ABSENT:
            if name in vars(owner):
                delattr(owner, name)
        else:
            setattr(owner, name, previous)

    return restore
