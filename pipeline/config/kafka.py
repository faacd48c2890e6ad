"""Kafka settings: what every client is built with, TLS and SASL, and what each library is handed.

:mod:`pipeline.kafka` hands :meth:`KafkaSecurity.aiokafka_options` to every producer, consumer and
admin client, and the router hands :meth:`KafkaSecurity.faust_credentials` to faust, whose aiokafka
driver turns them into the same options. One place decides what a secured client looks like, so a
process cannot connect with TLS from one client and in the clear from another.
"""

from __future__ import annotations

import ssl
from typing import Annotated, Any, Literal

from pydantic import model_validator

from pipeline.config.fields import ConfigError, Group, Upper, setting

#: Kafka's own names (``security.protocol``), which aiokafka and faust take as they are.
Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
#: The SASL mechanisms aiokafka speaks with a username and password (GSSAPI and OAUTHBEARER need
#: a Kerberos setup or a token provider, which no setting here can express).
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSecurityError(ConfigError):
    """The Kafka TLS files named by the settings cannot be loaded."""


class KafkaSecurity(Group):
    """How every Kafka client of the product authenticates and encrypts; PLAINTEXT by default."""

    protocol: Annotated[Protocol, Upper] = setting(
        "NPCFLOW_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "for every Kafka client (aiokafka, faust, admin): PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    sasl_mechanism: Annotated[Mechanism, Upper] = setting(
        "NPCFLOW_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512", "SASL mechanism (with SASL_*)"
    )
    sasl_username: str | None = setting(
        "NPCFLOW_KAFKA_SASL_USERNAME", None, "SASL user (required with SASL_*)"
    )
    sasl_password: str | None = setting(
        "NPCFLOW_KAFKA_SASL_PASSWORD", None, "SASL password (required with SASL_*)", secret=True
    )
    ssl_cafile: str | None = setting(
        "NPCFLOW_KAFKA_SSL_CA",
        None,
        "PEM file of the CAs that signed the brokers' certificates",
        shown_default="the system's trust store",
    )
    ssl_certfile: str | None = setting(
        "NPCFLOW_KAFKA_SSL_CERT", None, "client certificate (PEM) for mutual TLS"
    )
    ssl_keyfile: str | None = setting(
        "NPCFLOW_KAFKA_SSL_KEY", None, "client key (PEM) for mutual TLS; needs the certificate"
    )
    ssl_key_password: str | None = setting(
        "NPCFLOW_KAFKA_SSL_KEY_PASSWORD", None, "password of an encrypted client key", secret=True
    )
    ssl_check_hostname: bool = setting(
        "NPCFLOW_KAFKA_SSL_CHECK_HOSTNAME",
        True,
        "0 only for a test broker whose certificate does not name the host it is reached by",
    )

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        """A contradiction is one clear error at start, not a broker that silently drops the connection."""
        if self.uses_sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"NPCFLOW_KAFKA_SECURITY_PROTOCOL={self.protocol} needs NPCFLOW_KAFKA_SASL_USERNAME "
                "and NPCFLOW_KAFKA_SASL_PASSWORD"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError(
                "NPCFLOW_KAFKA_SSL_KEY is set without NPCFLOW_KAFKA_SSL_CERT: give the client certificate too"
            )
        if (self.ssl_cafile or self.ssl_certfile) and not self.uses_tls:
            raise ValueError(
                "NPCFLOW_KAFKA_SSL_CA/NPCFLOW_KAFKA_SSL_CERT are set but "
                f"NPCFLOW_KAFKA_SECURITY_PROTOCOL={self.protocol}: use SSL or SASL_SSL, or unset them"
            )
        return self

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
                "cannot load the Kafka TLS files (NPCFLOW_KAFKA_SSL_CA, NPCFLOW_KAFKA_SSL_CERT, "
                f"NPCFLOW_KAFKA_SSL_KEY): {exc}"
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


class KafkaOptions(Group):
    """What every Kafka client of the product is built with (see :mod:`pipeline.kafka`)."""

    fetch_max_wait_ms: int = setting(
        "NPCFLOW_FETCH_MAX_WAIT_MS",
        500,
        "how long the broker may hold a consumer's fetch when there is nothing to return; Kafka "
        "answers as soon as a record arrives, so this only bounds how often an idle consumer asks",
        ge=1,
        le=60_000,
    )
    session_timeout_s: float = setting(
        "NPCFLOW_SESSION_TIMEOUT_S",
        6.0,
        "consumer-group session timeout: how long a dead member keeps its partitions; a new "
        "process joins in about half of it",
        gt=0,
        le=3600,
    )
    #: TLS and SASL (``NPCFLOW_KAFKA_SECURITY_PROTOCOL`` ...).
    security: KafkaSecurity = KafkaSecurity()
