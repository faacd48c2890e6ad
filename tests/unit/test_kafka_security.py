"""Kafka security settings reach every client exactly as aiokafka and faust take them.

The clients are built (never started) by the one factory and by the router's faust app, and the
test reads what each library stored: that is what it will use on its first connection.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from pipeline import kafka
from pipeline.cli import main
from pipeline.config import ConfigError, KafkaSecurity, KafkaSecurityError, Settings
from pipeline.router.app import create_app
from topics.acl import Acl, tenant_acls
from topics.catalogue import reply_topic_problem

BOOTSTRAP = {"NPCFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:9"}


def write_pki(directory: Path) -> dict[str, Path]:
    """A CA and a client certificate it signed, as PEM files (what an operator mounts)."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey):  # type: ignore[no-untyped-def]
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=subject == issuer, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    ca_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    paths["ca"].write_bytes(
        cert("npcflow-test-ca", ca_key, "npcflow-test-ca", ca_key).public_bytes(serialization.Encoding.PEM)
    )
    paths["cert"].write_bytes(
        cert("router", client_key, "npcflow-test-ca", ca_key).public_bytes(serialization.Encoding.PEM)
    )
    paths["key"].write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
def sasl_ssl_env(tmp_path: Path) -> dict[str, str]:
    pki = write_pki(tmp_path)
    return {
        **BOOTSTRAP,
        "NPCFLOW_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "NPCFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "NPCFLOW_KAFKA_SASL_USERNAME": "npcflow-router",
        "NPCFLOW_KAFKA_SASL_PASSWORD": "s3cret",
        "NPCFLOW_KAFKA_SSL_CA": str(pki["ca"]),
        "NPCFLOW_KAFKA_SSL_CERT": str(pki["cert"]),
        "NPCFLOW_KAFKA_SSL_KEY": str(pki["key"]),
    }


def _client_options(client: object) -> dict[str, object]:
    """What an aiokafka producer, consumer or admin client will connect with."""
    inner = getattr(client, "client", None) or client._client  # type: ignore[attr-defined]
    return {
        "security_protocol": inner._security_protocol,
        "sasl_mechanism": inner._sasl_mechanism,
        "sasl_plain_username": inner._sasl_plain_username,
        "sasl_plain_password": inner._sasl_plain_password,
        "ssl_context": inner._ssl_context,
    }


async def test_without_settings_every_client_is_plaintext() -> None:
    settings = Settings.from_env(BOOTSTRAP, stack_file=False)
    assert settings.kafka.security == KafkaSecurity()
    assert settings.kafka.security.aiokafka_options() == {"security_protocol": "PLAINTEXT"}
    assert settings.kafka.security.faust_credentials() is None
    options = _client_options(kafka.producer(settings, "t"))
    assert options["security_protocol"] == "PLAINTEXT" and options["ssl_context"] is None


async def test_sasl_ssl_reaches_producer_consumer_and_admin(sasl_ssl_env: dict[str, str]) -> None:
    settings = Settings.from_env(sasl_ssl_env, stack_file=False)
    clients = [
        kafka.producer(settings, "p"),
        kafka.consumer(settings, "c", "npc.requests", group_id="g"),
        kafka.admin(settings),
    ]
    for client in clients:
        options = _client_options(client)
        context = options.pop("ssl_context")
        assert options == {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_plain_username": "npcflow-router",
            "sasl_plain_password": "s3cret",
        }, type(client).__name__
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
        # The CA file was loaded into the context (one CA, ours), not the system's store.
        assert [dict(pair[0] for pair in ca["subject"]) for ca in context.get_ca_certs()] == [
            {"commonName": "npcflow-test-ca"}
        ]


async def test_the_router_faust_clients_get_the_same_security(
    sasl_ssl_env: dict[str, str], tmp_path: Path
) -> None:
    settings = Settings.from_env(sasl_ssl_env, stack_file=False)
    app, _ = create_app(settings, datadir=tmp_path)
    auth = dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))
    assert isinstance(auth.pop("ssl_context"), ssl.SSLContext)
    assert auth == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "npcflow-router",
        "sasl_plain_password": "s3cret",
    }
    # The consumer our transport builds, and faust's producer: the options aiokafka really got.
    worker_consumer = app.consumer._thread._create_worker_consumer(app.transport)
    producer = app.producer._new_producer()
    for client in (worker_consumer, producer):
        options = _client_options(client)
        assert options["security_protocol"] == "SASL_SSL"
        assert options["sasl_plain_username"] == "npcflow-router"
        assert isinstance(options["ssl_context"], ssl.SSLContext)


async def test_ssl_without_sasl_is_mutual_tls_in_faust_too(
    sasl_ssl_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in sasl_ssl_env.items() if "SASL" not in k} | {
        "NPCFLOW_KAFKA_SECURITY_PROTOCOL": "SSL"
    }
    settings = Settings.from_env(env, stack_file=False)
    options = settings.kafka.security.aiokafka_options()
    assert set(options) == {"security_protocol", "ssl_context"} and options["security_protocol"] == "SSL"
    app, _ = create_app(settings, datadir=tmp_path)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)


def test_sasl_plaintext_has_no_tls_context() -> None:
    env = {
        "NPCFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "NPCFLOW_KAFKA_SASL_MECHANISM": "plain",
        "NPCFLOW_KAFKA_SASL_USERNAME": "u",
        "NPCFLOW_KAFKA_SASL_PASSWORD": "p",
    }
    assert Settings.from_env(env, stack_file=False).kafka.security.aiokafka_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"NPCFLOW_KAFKA_SECURITY_PROTOCOL": "TLS"},
            "NPCFLOW_KAFKA_SECURITY_PROTOCOL='TLS': input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or",
        ),
        ({"NPCFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs NPCFLOW_KAFKA_SASL_USERNAME"),
        (
            {"NPCFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "NPCFLOW_KAFKA_SASL_MECHANISM": "GSSAPI"},
            "NPCFLOW_KAFKA_SASL_MECHANISM='GSSAPI'",
        ),
        ({"NPCFLOW_KAFKA_SSL_CA": "/ca.pem"}, "use SSL or SASL_SSL"),
        (
            {"NPCFLOW_KAFKA_SECURITY_PROTOCOL": "SSL", "NPCFLOW_KAFKA_SSL_KEY": "/k.pem"},
            "without NPCFLOW_KAFKA_SSL_CERT",
        ),
    ],
)
def test_contradictory_settings_are_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env(BOOTSTRAP | env, stack_file=False)


def test_an_unreadable_ca_file_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NPCFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setenv("NPCFLOW_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("NPCFLOW_KAFKA_SSL_CA", str(tmp_path / "missing-ca.pem"))
    settings = Settings.from_env(stack_file=False)
    with pytest.raises(KafkaSecurityError, match="cannot load the Kafka TLS files"):
        kafka.producer(settings, "p")


def test_the_password_never_shows_in_a_repr(sasl_ssl_env: dict[str, str]) -> None:
    settings = Settings.from_env(sasl_ssl_env, stack_file=False)
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in repr(settings.kafka.security.faust_credentials())


def test_the_cli_reports_a_bad_protocol_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPCFLOW_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.delenv("NPCFLOW_KAFKA_SASL_USERNAME", raising=False)
    result = CliRunner().invoke(main, ["topics", "list"])
    assert result.exit_code != 0
    assert "needs NPCFLOW_KAFKA_SASL_USERNAME" in result.output and "Traceback" not in result.output


def _allowed(acls: list[Acl], principal: str, operation: str, topic: str) -> bool:
    """Kafka's matching of topic ACLs: a literal name, or a prefix."""
    return any(
        acl.principal == principal
        and operation in acl.operations
        and acl.resource == "topic"
        and (topic == acl.name if acl.pattern == "literal" else topic.startswith(acl.name))
        for acl in acls
    )


@pytest.mark.parametrize("prefix", ["", "staging."])
def test_a_tenants_reply_topics_are_readable_by_that_tenant_alone(prefix: str) -> None:
    grants = {t: tenant_acls(t, prefix) for t in ("gs-eu-1", "gs-eu-12", "gs-us-1")}
    every = [acl for acls in grants.values() for acl in acls]
    own = [f"{prefix}npc.replies.gs-eu-1", f"{prefix}npc.replies.gs-eu-1.lobby"]
    for topic in own:
        assert reply_topic_problem(topic, prefix, "gs-eu-1") is None  # topics the router accepts
        readers = {acl.principal for acl in every if _allowed([acl], acl.principal, "Read", topic)}
        writers = {acl.principal for acl in every if _allowed([acl], acl.principal, "Write", topic)}
        assert readers == {"User:gs-eu-1"}, topic
        assert writers == {"User:npcflow"}, topic
    # gs-eu-1's grants reach neither gs-eu-12's topics (a bare prefix would) nor the shared one.
    for topic in (f"{prefix}npc.replies.gs-eu-12", f"{prefix}npc.replies.gs-eu-12.x", f"{prefix}npc.replies"):
        assert not _allowed(grants["gs-eu-1"], "User:gs-eu-1", "Read", topic), topic
    assert _allowed(grants["gs-eu-1"], "User:gs-eu-1", "Write", f"{prefix}npc.requests")


def test_the_acl_command_prints_kafka_acls_lines() -> None:
    result = CliRunner().invoke(
        main, ["topics", "acl", "--tenant", "gs-eu-1", "--prefix", "p.", "--principal", "User:CN=gs-eu-1"]
    )
    assert result.exit_code == 0, result.output
    commands = [line for line in result.output.splitlines() if line.startswith("kafka-acls.sh")]
    assert len(commands) == len(tenant_acls("gs-eu-1"))
    assert (
        "--allow-principal User:CN=gs-eu-1 --operation Read --operation Describe "
        "--topic p.npc.replies.gs-eu-1 --resource-pattern-type literal" in result.output
    )
    bad = CliRunner().invoke(main, ["topics", "acl", "--tenant", "../etc"])
    assert bad.exit_code == 2 and "not a reply-topic segment" in bad.output
