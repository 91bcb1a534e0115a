#!/usr/bin/env bash
# Starts a throwaway OpenLDAP (slapd) for tests: scripts/slapd.sh DIR PORT
#
# Suffix dc=example,dc=com, rootdn cn=admin,dc=example,dc=com with password
# "admin-secret" (override with SLAPD_ROOTPW), overlays syncprov (RFC 4533)
# and memberof. Installs slapd and ldap-utils when missing. Prints the pid
# file's path on success.
#
# With SLAPD_NO_SYNCPROV=1 the syncprov overlay is left out, so the server
# does not advertise content synchronisation (deltas by modifyTimestamp).
#
# With SLAPD_LDIF set, that LDIF is loaded with slapadd before slapd starts
# (much faster than ldapadd for a large directory: benches/ldap.rs). slapadd
# runs no overlay, so the LDIF carries its users' memberOf itself.
# SLAPD_MAXSIZE sets the database's map size in bytes (default 100 MiB).
#
# With SLAPD_LDAPS_PORT set, also generates a throwaway CA and a server
# certificate for 127.0.0.1/localhost (DIR/tls/ca.crt), enables StartTLS on
# PORT and listens for ldaps:// on SLAPD_LDAPS_PORT.
set -euo pipefail

DIR=${1:?usage: slapd.sh DIR PORT}
PORT=${2:?usage: slapd.sh DIR PORT}
ROOTPW=${SLAPD_ROOTPW:-admin-secret}

if ! command -v slapd >/dev/null 2>&1 && [ ! -x /usr/sbin/slapd ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends slapd ldap-utils >"$DIR.apt.log" 2>&1; then
    apt-get update >>"$DIR.apt.log" 2>&1
    apt-get install -y --no-install-recommends slapd ldap-utils >>"$DIR.apt.log" 2>&1 || {
      cat "$DIR.apt.log" >&2
      exit 1
    }
  fi
fi
SLAPD=$(command -v slapd || echo /usr/sbin/slapd)

mkdir -p "$DIR/db"
SYNCPROV_LOAD="moduleload syncprov"
SYNCPROV_OVERLAY="overlay syncprov
syncprov-checkpoint 100 10
syncprov-sessionlog 10000"
if [ "${SLAPD_NO_SYNCPROV:-}" = 1 ]; then
  SYNCPROV_LOAD=""
  SYNCPROV_OVERLAY=""
fi
URLS="ldap://127.0.0.1:$PORT/"
TLSCONF=""
if [ -n "${SLAPD_LDAPS_PORT:-}" ]; then
  T="$DIR/tls"
  "$(dirname "$0")/test-ca.sh" "$T"
  TLSCONF="TLSCACertificateFile $T/ca.crt
TLSCertificateFile $T/server.crt
TLSCertificateKeyFile $T/server.key"
  URLS="$URLS ldaps://127.0.0.1:$SLAPD_LDAPS_PORT/"
fi
cat >"$DIR/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema

$TLSCONF

pidfile $DIR/slapd.pid
argsfile $DIR/slapd.args

modulepath /usr/lib/ldap
moduleload back_mdb
$SYNCPROV_LOAD
moduleload memberof

sizelimit unlimited

database mdb
maxsize ${SLAPD_MAXSIZE:-104857600}
suffix "dc=example,dc=com"
rootdn "cn=admin,dc=example,dc=com"
rootpw $ROOTPW
directory $DIR/db
index objectClass eq
index entryCSN,entryUUID eq
limits dn.exact="cn=admin,dc=example,dc=com" size=unlimited time=unlimited

$SYNCPROV_OVERLAY

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint true
CONF

if [ -n "${SLAPD_LDIF:-}" ]; then
  SLAPADD=$(command -v slapadd || echo /usr/sbin/slapadd)
  "$SLAPADD" -q -f "$DIR/slapd.conf" -l "$SLAPD_LDIF" >"$DIR/slapadd.log" 2>&1 || {
    echo "slapadd failed:" >&2
    cat "$DIR/slapadd.log" >&2
    exit 1
  }
fi

"$SLAPD" -f "$DIR/slapd.conf" -h "$URLS" >"$DIR/slapd.log" 2>&1 || {
  echo "slapd failed to start:" >&2
  cat "$DIR/slapd.log" >&2
  exit 1
}

for _ in $(seq 1 100); do
  if ldapsearch -x -H "ldap://127.0.0.1:$PORT/" -b "" -s base "(objectClass=*)" namingContexts >/dev/null 2>&1; then
    echo "$DIR/slapd.pid"
    exit 0
  fi
  sleep 0.1
done
echo "slapd did not answer on port $PORT" >&2
cat "$DIR/slapd.log" >&2
exit 1
