#!/usr/bin/env bash
# Makes a development CA, a relay server certificate and a connector client certificate with the
# openssl CLI. For development and tests only: see Certs/README.md for real certificates.
#
#   Certs/make-dev-certs.sh [OUTPUT_DIR]     (default: Certs/dev)
#
# Files written (keys are 0600):
#   ca.pem ca.key                 the development CA; connectors and relayctl trust only this
#   relay.pem relay.key           relay server certificate, SANs localhost, 127.0.0.1, ::1 and any in
#                                 env EXTRA_SAN (for example EXTRA_SAN=IP:10.0.0.5,DNS:relay.lan)
#   client.pem client.key         client certificate (CN=dev-connector) for mTLS
#
# RELAY_ONLY=1 keeps the CA in OUTPUT_DIR and issues a new relay certificate and key only (a
# rotation: connectors trust the CA, not the certificate, so they accept the new one).
set -euo pipefail
out="${1:-$(dirname "$0")/dev}"
days="${CERT_DAYS:-825}"
mkdir -p "$out"
cd "$out"
umask 077

if [ -n "${RELAY_ONLY:-}" ]; then
  [ -f ca.pem ] && [ -f ca.key ] || { echo "RELAY_ONLY: no ca.pem and ca.key in $(pwd)" >&2; exit 2; }
else
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days "$days" \
  -subj "/CN=Remote Access Relay Dev CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

issue() { # name cn extensions
  local name="$1" cn="$2" ext="$3"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -subj "/CN=$cn" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  printf '%b' "$ext" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
issue relay localhost "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1${EXTRA_SAN:+,$EXTRA_SAN}\n"
[ -n "${RELAY_ONLY:-}" ] || issue client dev-connector "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
rm -f ca.srl
chmod 600 ./*.key
chmod 644 ./*.pem
echo "wrote $(pwd): ca.pem relay.pem relay.key client.pem client.key"
