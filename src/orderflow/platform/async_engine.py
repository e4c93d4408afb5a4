"""SQLAlchemy's asyncio engine, without loading SQLAlchemy's ORM for it.

orderflow uses SQLAlchemy Core only. `import sqlalchemy.ext.asyncio` runs that package's
`__init__`, which also imports its ORM session classes, and so the whole ORM: about 6 MB
of every service process at rest and a tenth of a second of its start (issue 15). The
engine classes live in `sqlalchemy.ext.asyncio.engine`, which needs none of it; this
module imports that submodule with the package's `__init__` deferred until something
asks the package for a name the engine module does not give (an ORM session, say): then
the `__init__` runs, as it would have, and everything of the package is there.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

PACKAGE = "sqlalchemy.ext.asyncio"


def _engine_module() -> Any:
    if PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is not None and spec.loader is not None:
            package = importlib.util.module_from_spec(spec)
            loader = spec.loader

            def deferred(name: str) -> Any:
                # A submodule is imported as usual (the import system asks first).
                if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
                    raise AttributeError(name)
                del package.__dict__["__getattr__"]
                loader.exec_module(package)  # the package's own __init__, now
                return getattr(package, name)

            package.__getattr__ = deferred  # type: ignore[method-assign]
            sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.engine")


if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
else:
    _engine = _engine_module()
    AsyncConnection = _engine.AsyncConnection
    AsyncEngine = _engine.AsyncEngine
    create_async_engine = _engine.create_async_engine

__all__ = ["AsyncConnection", "AsyncEngine", "create_async_engine"]
