#!/usr/bin/env bash
# Firebird for the register tests: install the server when missing, start it when stopped,
# and give SYSDBA a fresh random password kept OUTSIDE the checkout, readable by root only:
#   $REPLICATOR_TEST_FB_PASSWORD_FILE (default /var/lib/replicator-test/firebird.password)
# The password is never printed. Idempotent: when the server answers with the kept password,
# nothing is done. tests/fixtures_firebird.py runs this script itself when the server cannot
# be reached.
set -euo pipefail

PASSWORD_FILE="${REPLICATOR_TEST_FB_PASSWORD_FILE:-/var/lib/replicator-test/firebird.password}"
DEBIAN_PASSWORD=/etc/firebird/3.0/SYSDBA.password
PORT=3050

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "firebird.sh: $1 needs root; run it as root (or with sudo)" >&2
        exit 1
    fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# Whether SYSDBA logs in over TCP with the password in $1 (passed in the environment,
# never on a command line).
works() {
    [ -n "$1" ] && ISC_USER=SYSDBA ISC_PASSWORD="$1" \
        fbsvcmgr "localhost/$PORT:service_mgr" info_server_version >/dev/null 2>&1
}

# --- packages --------------------------------------------------------------------------------
if ! command -v isql-fb >/dev/null 2>&1 || ! dpkg -s firebird3.0-server >/dev/null 2>&1 \
    || ! dpkg -s libfbclient2 >/dev/null 2>&1; then
    need_root "installing firebird3.0-server"
    echo "installing firebird3.0-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        firebird3.0-server firebird3.0-utils libfbclient2 >/dev/null
fi

# --- the server ------------------------------------------------------------------------------
if ! port_open; then
    need_root "starting the Firebird server"
    echo "starting Firebird"
    if [ -x /etc/init.d/firebird3.0 ]; then
        /etc/init.d/firebird3.0 start >/dev/null || true
    fi
    if ! port_open && command -v fbguard >/dev/null 2>&1; then
        mkdir -p /var/run/firebird3.0 && chown firebird:firebird /var/run/firebird3.0
        runuser -u firebird -- fbguard -daemon -forever \
            -pidfile /var/run/firebird3.0/firebird.pid || true
    fi
    for _ in $(seq 1 30); do port_open && break; sleep 0.5; done
    if ! port_open; then
        echo "firebird.sh: the Firebird server does not listen on 127.0.0.1:$PORT" >&2
        exit 1
    fi
fi

# --- the SYSDBA password ---------------------------------------------------------------------
kept=""
if [ -r "$PASSWORD_FILE" ]; then kept="$(head -n 1 "$PASSWORD_FILE")"; fi
if works "$kept"; then
    exit 0  # all in place
fi
need_root "setting the SYSDBA password"

fresh="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | cut -c1-20)"
# Set through the embedded engine as the firebird user, with the server stopped for a moment
# (the security database is the server's file; no old password is needed).
echo "setting a fresh SYSDBA password (the server restarts)"
/etc/init.d/firebird3.0 stop >/dev/null 2>&1 || true
for _ in $(seq 1 20); do port_open || break; sleep 0.5; done
printf "ALTER USER SYSDBA PASSWORD '%s';\nCOMMIT;\n" "$fresh" \
    | runuser -u firebird -- env ISC_USER=SYSDBA isql-fb -q -b \
        /var/lib/firebird/3.0/system/security3.fdb >/dev/null
/etc/init.d/firebird3.0 start >/dev/null
for _ in $(seq 1 30); do port_open && break; sleep 0.5; done
sleep 0.5

if ! works "$fresh"; then
    echo "firebird.sh: could not set the SYSDBA password" >&2
    exit 1
fi
mkdir -p "$(dirname "$PASSWORD_FILE")"
chmod 700 "$(dirname "$PASSWORD_FILE")"
(umask 077 && printf '%s\n' "$fresh" >"$PASSWORD_FILE")
chmod 600 "$PASSWORD_FILE"
# Debian's maintenance scripts read the password from here: keep it in step.
if [ -f "$DEBIAN_PASSWORD" ]; then
    (umask 077 && printf 'ISC_USER=sysdba\nISC_PASSWORD="%s"\n' "$fresh" >"$DEBIAN_PASSWORD")
fi
echo "Firebird is ready; the SYSDBA password is in $PASSWORD_FILE"
