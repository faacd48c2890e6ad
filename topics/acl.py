"""The Kafka ACLs that make a tenant's reply topics readable by that tenant alone.

``npcflow topics acl --tenant NAME`` prints them as ``kafka-acls.sh`` commands for an operator to
run (npcflow never changes a cluster's ACLs itself: that needs the cluster admin's credentials,
which no pipeline process should hold). On a cluster with an authorizer and
``allow.everyone.if.no.acl.found=false`` (the secure default), a topic with no ACL naming a
principal cannot be read by it, so after these grants only the tenant reads
``npc.replies.<tenant>`` and ``npc.replies.<tenant>.<name>``, and only npcflow's own principal
writes them. The shared ``npc.replies`` is, by design, readable by every tenant granted it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from topics.catalogue import ACTIVE, INTENTS, REPLIES, REPLY_SEGMENT, REQUESTS

#: The principal the pipeline's processes (router, workers, collector) authenticate as.
DEFAULT_SERVICE_PRINCIPAL = "User:npcflow"


class AclError(ValueError):
    """The tenant or a principal cannot be turned into ACLs (the message says why)."""


@dataclass(frozen=True)
class Acl:
    """One ``kafka-acls.sh --add``: a principal allowed some operations on one resource pattern."""

    principal: str
    operations: tuple[str, ...]
    resource: str  # "topic" or "group"
    name: str
    pattern: str  # "literal" or "prefixed"
    why: str

    def command(self, bootstrap: str, command_config: str) -> str:
        ops = " ".join(f"--operation {op}" for op in self.operations)
        return (
            f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} --add "
            f"--allow-principal {self.principal} {ops} --{self.resource} {self.name} "
            f"--resource-pattern-type {self.pattern}"
        )


def tenant_acls(
    tenant: str,
    prefix: str = "",
    *,
    principal: str | None = None,
    service_principal: str = DEFAULT_SERVICE_PRINCIPAL,
) -> list[Acl]:
    """The grants for one tenant: its own reply topics, the intake, the intents, its active NPCs, its groups.

    The tenant's family is granted as two patterns, the literal ``npc.replies.<tenant>`` and the
    prefix ``npc.replies.<tenant>.`` (with the dot): a bare prefix ``npc.replies.<tenant>`` would
    also match tenant ``<tenant>2``'s topics.
    """
    if not re.fullmatch(REPLY_SEGMENT, tenant):
        raise AclError(f"tenant {tenant!r} is not a reply-topic segment ({REPLY_SEGMENT})")
    principal = principal or f"User:{tenant}"
    for who in (principal, service_principal):
        if ":" not in who:
            raise AclError(f"principal {who!r}: write it as Type:name, e.g. User:{tenant}")
    family = f"{REPLIES.name(prefix)}.{tenant}"
    read, write = ("Read", "Describe"), ("Write", "Describe")
    return [
        Acl(principal, read, "topic", family, "literal", "the tenant reads its own reply topic"),
        Acl(principal, read, "topic", f"{family}.", "prefixed", "and its named reply topics"),
        Acl(principal, write, "topic", REQUESTS.name(prefix), "literal", "the tenant sends requests"),
        Acl(
            principal,
            ("Read", "Write", "Describe"),
            "topic",
            INTENTS.name(prefix),
            "literal",
            "its near cache follows NPC intents and publishes the game's own",
        ),
        Acl(principal, write, "topic", ACTIVE.name(prefix), "literal", "it names the NPCs to keep fresh"),
        Acl(principal, ("Read",), "group", f"{tenant}.", "prefixed", "consumer groups named <tenant>.*"),
        Acl(service_principal, write, "topic", family, "literal", "npcflow's workers write the replies"),
        Acl(service_principal, write, "topic", f"{family}.", "prefixed", "to every named reply topic too"),
    ]


def render(acls: list[Acl], bootstrap: str, command_config: str) -> str:
    """The commands, each after a comment saying why it is needed."""
    lines = []
    for acl in acls:
        lines.append(f"# {acl.why}")
        lines.append(acl.command(bootstrap, command_config))
    return "\n".join(lines)
