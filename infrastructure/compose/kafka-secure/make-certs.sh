#!/bin/sh
# The `sasl-ssl` profile's certificates, made once into the kafka-certs volume: the broker's
# PKCS12 keystore (a self-signed certificate for the name kafka-secure) and its certificate as
# PEM, which npcflow's processes trust (NPCFLOW_KAFKA_SSL_CA=/certs/ca.pem). Runs in the
# apache/kafka image, whose JRE has keytool. A real deployment mounts certificates from its CA.
set -eu
cd /certs
if [ -s broker.p12 ] && [ -s ca.pem ]; then
  echo "certificates exist"; exit 0
fi
keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 825 \
  -dname "CN=kafka-secure" -ext "SAN=dns:kafka-secure,dns:localhost" \
  -keystore broker.p12 -storetype PKCS12 \
  -storepass "$BROKER_KEYSTORE_PASSWORD" -keypass "$BROKER_KEYSTORE_PASSWORD"
keytool -exportcert -rfc -alias broker -keystore broker.p12 -storetype PKCS12 \
  -storepass "$BROKER_KEYSTORE_PASSWORD" -file ca.pem
# The broker runs as the image's appuser (uid 1000); npcflow (uid 10001) reads only ca.pem.
chown 1000 broker.p12 && chmod 0600 broker.p12 && chmod 0644 ca.pem
echo "certificates written"
