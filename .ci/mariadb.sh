#!/usr/bin/env bash
# MariaDB registers for the test suite: the ODBC driver manager and MariaDB's ODBC driver, and
# a running server at 127.0.0.1:3306 (root, no password). Idempotent; quick when all is there.
set -euo pipefail

missing=()
for pkg in unixodbc odbc-mariadb mariadb-server mariadb-client; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
        || echo "warning: could not install ${missing[*]}; the MariaDB tests fail under CI=true"
fi

# Debian's odbc-mariadb registers "MariaDB Unicode" in /etc/odbcinst.ini; register it when a
# manual install left it out.
if command -v odbcinst >/dev/null 2>&1 && ! odbcinst -q -d 2>/dev/null | grep -q '^\[MariaDB Unicode\]'; then
    lib=$(find /usr/lib -name libmaodbc.so 2>/dev/null | head -1 || true)
    if [ -n "$lib" ]; then
        printf '[MariaDB Unicode]\nDriver=%s\nDescription=MariaDB Connector/ODBC(Unicode)\nThreading=0\n' "$lib" \
            | odbcinst -i -d -r >/dev/null
    fi
fi

ping() { mariadb-admin --host=127.0.0.1 --port=3306 --user=root --connect-timeout=2 ping >/dev/null 2>&1; }
if ! ping; then
    if [ -x /usr/sbin/mariadbd ]; then
        echo "starting MariaDB"
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
        if [ ! -d /var/lib/mysql/mysql ]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        fi
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
        for _ in $(seq 1 30); do ping && break; sleep 1; done
    fi
fi
# The tests log in over TCP as root without a password (a throwaway CI server). Debian's root
# logs in through the unix socket only: allow the empty password too, once.
if ping && ! mariadb --host=127.0.0.1 --user=root -e "SELECT 1" >/dev/null 2>&1; then
    mariadb --user=root -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('')" \
        || echo "warning: could not let root log in over TCP without a password"
fi
ping && echo "MariaDB is up at 127.0.0.1:3306" || echo "warning: MariaDB is not reachable at 127.0.0.1:3306"
