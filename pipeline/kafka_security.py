"""Kafka security settings (TLS and SASL) and what each client library is handed from them.

:mod:`pipeline.config` reads the variables (from the mapping it is given; nothing here reads
``os.environ``) into :class:`KafkaSecurity`; :mod:`pipeline.kafka` hands
:meth:`KafkaSecurity.aiokafka_options` to every producer, consumer and admin client, and the router
hands :meth:`KafkaSecurity.faust_credentials` to faust, whose aiokafka driver turns them into the
same options. One place decides what a secured client looks like, so a process cannot connect
with TLS from one client and in the clear from another.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from topics.errors import UserFacingError

ENV_SECURITY_PROTOCOL = "NPCFLOW_KAFKA_SECURITY_PROTOCOL"
ENV_SASL_MECHANISM = "NPCFLOW_KAFKA_SASL_MECHANISM"
ENV_SASL_USERNAME = "NPCFLOW_KAFKA_SASL_USERNAME"
ENV_SASL_PASSWORD = "NPCFLOW_KAFKA_SASL_PASSWORD"
ENV_SSL_CA = "NPCFLOW_KAFKA_SSL_CA"
ENV_SSL_CERT = "NPCFLOW_KAFKA_SSL_CERT"
ENV_SSL_KEY = "NPCFLOW_KAFKA_SSL_KEY"
ENV_SSL_KEY_PASSWORD = "NPCFLOW_KAFKA_SSL_KEY_PASSWORD"
ENV_SSL_CHECK_HOSTNAME = "NPCFLOW_KAFKA_SSL_CHECK_HOSTNAME"

#: Kafka's own names (``security.protocol``), which aiokafka and faust take as they are.
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: The SASL mechanisms aiokafka speaks with a username and password (GSSAPI and OAUTHBEARER need
#: a Kerberos setup or a token provider, which no setting here can express).
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(UserFacingError, RuntimeError):
    """The Kafka security settings contradict each other or name a file that cannot be read."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client of the product authenticates and encrypts; PLAINTEXT by default."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: str | None = None
    #: PEM bundle of the CAs that signed the brokers' certificates; None: the system's trust store.
    ssl_cafile: str | None = None
    #: Client certificate and key (PEM) for mutual TLS; the key may be encrypted with the password.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = None
    #: Off only for a test broker whose certificate does not name the host it is reached by.
    ssl_check_hostname: bool = True

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def __repr__(self) -> str:  # never print the password (logs, error reports)
        secret = "***" if self.sasl_password else None
        return (
            f"KafkaSecurity(protocol={self.protocol!r}, sasl_mechanism={self.sasl_mechanism!r}, "
            f"sasl_username={self.sasl_username!r}, sasl_password={secret!r}, "
            f"ssl_cafile={self.ssl_cafile!r}, ssl_certfile={self.ssl_certfile!r})"
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context (CA, optional client certificate), or None without TLS.

        Built per client: it reads the files then, so a rotated certificate is picked up by the
        next client a process starts (and a restart picks it up everywhere).
        """
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, self.ssl_key_password)
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(
                f"cannot load the Kafka TLS files ({ENV_SSL_CA}, {ENV_SSL_CERT}, {ENV_SSL_KEY}): {exc}"
            ) from exc
        context.check_hostname = self.ssl_check_hostname
        return context

    def aiokafka_options(self) -> dict[str, Any]:
        """The keyword arguments AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient take."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            # aiokafka takes the SCRAM credentials under the PLAIN names too.
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return options

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for ``faust.App``: None, SSLCredentials or SASLCredentials.

        faust's aiokafka driver turns these back into the same options as
        :meth:`aiokafka_options` for every consumer and producer it builds.
        """
        import faust  # the router's dependency; imported here so workers never pay for it

        if self.uses_sasl:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                ssl_context=self.ssl_context(),
                mechanism=self.sasl_mechanism,
            )
        if self.uses_tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


def _get(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


def read_kafka_security(env: Mapping[str, str]) -> KafkaSecurity:
    """Read the ``NPCFLOW_KAFKA_SECURITY_*`` / ``_SASL_*`` / ``_SSL_*`` variables from ``env``.

    Called by :meth:`pipeline.config.Settings.from_env` with the environment it reads; a
    contradiction (SASL without a password, a key without a certificate) is one clear error at
    start rather than a broker that silently drops the connection.
    """
    protocol = (_get(env, ENV_SECURITY_PROTOCOL) or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise KafkaSecurityError(
            f"{ENV_SECURITY_PROTOCOL}={protocol!r}: choose one of {', '.join(PROTOCOLS)}"
        )
    mechanism = (_get(env, ENV_SASL_MECHANISM) or "SCRAM-SHA-512").upper()
    if mechanism not in MECHANISMS:
        raise KafkaSecurityError(f"{ENV_SASL_MECHANISM}={mechanism!r}: choose one of {', '.join(MECHANISMS)}")
    check = (_get(env, ENV_SSL_CHECK_HOSTNAME) or "1").lower()
    if check not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise KafkaSecurityError(f"{ENV_SSL_CHECK_HOSTNAME}={check!r}: use 1 or 0")
    security = KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=_get(env, ENV_SASL_USERNAME),
        sasl_password=_get(env, ENV_SASL_PASSWORD),
        ssl_cafile=_get(env, ENV_SSL_CA),
        ssl_certfile=_get(env, ENV_SSL_CERT),
        ssl_keyfile=_get(env, ENV_SSL_KEY),
        ssl_key_password=_get(env, ENV_SSL_KEY_PASSWORD),
        ssl_check_hostname=check in ("1", "true", "yes", "on"),
    )
    if security.uses_sasl and not (security.sasl_username and security.sasl_password):
        raise KafkaSecurityError(
            f"{ENV_SECURITY_PROTOCOL}={protocol} needs {ENV_SASL_USERNAME} and {ENV_SASL_PASSWORD}"
        )
    if security.ssl_keyfile and not security.ssl_certfile:
        raise KafkaSecurityError(
            f"{ENV_SSL_KEY} is set without {ENV_SSL_CERT}: give the client certificate too"
        )
    tls_files = security.ssl_cafile or security.ssl_certfile
    if tls_files and not security.uses_tls:
        raise KafkaSecurityError(
            f"{ENV_SSL_CA}/{ENV_SSL_CERT} are set but {ENV_SECURITY_PROTOCOL}={protocol}: "
            "use SSL or SASL_SSL, or unset them"
        )
    return security
