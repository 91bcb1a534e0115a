#!/usr/bin/env bash
# Makes a throwaway CA and a server certificate for 127.0.0.1/localhost,
# for the test servers that speak TLS (scripts/slapd.sh, scripts/postgres.sh):
#   scripts/test-ca.sh DIR
# writes DIR/ca.crt, DIR/server.crt and DIR/server.key (mode 0600), valid
# for two days; openssl's output goes to DIR/openssl.log.
set -euo pipefail

T=${1:?usage: test-ca.sh DIR}
mkdir -p "$T"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=idsync test CA" \
  -keyout "$T/ca.key" -out "$T/ca.crt" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" >"$T/openssl.log" 2>&1
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$T/server.key" -out "$T/server.csr" \
  >>"$T/openssl.log" 2>&1
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$T/ext"
openssl x509 -req -in "$T/server.csr" -CA "$T/ca.crt" -CAkey "$T/ca.key" -CAcreateserial -days 2 \
  -extfile "$T/ext" -out "$T/server.crt" >>"$T/openssl.log" 2>&1
chmod 0600 "$T/server.key"
