#!/usr/bin/env bash
# Removes the edge ANPR service, its releases and model sets. The configuration (/etc/edge-anpr), the
# spool (/var/lib/edge-anpr: events not yet delivered) and the service user stay, unless --purge.
#
#   sudo deploy/uninstall.sh [--purge]
#   deploy/uninstall.sh --root DIR [--purge]      # test mode (see install.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/lib.sh
. "$HERE/lib.sh"

usage() {
    cat <<EOF
usage: $0 [--root DIR] [--purge]

  --purge     also remove the configuration, the spool (undelivered events are lost) and the service user
  --root DIR  test mode: work under DIR; systemctl and userdel are printed, not run
EOF
}

root="" purge=0
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --purge) purge=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" 2 ;;
    esac
done
set_root "$root"
require_root

if [ -f "$UNIT" ]; then
    # Stopping drains the spool for mqtt.drain_timeout_s; what is left stays in it (kept without --purge).
    priv systemctl disable --now "$APP.service"
    rm -f "$UNIT"
    priv systemctl daemon-reload
    say "removed the service $APP"
fi
if [ -d "$OPT" ]; then
    rm -rf "$OPT"
    say "removed $OPT (releases and model sets)"
fi

if [ "$purge" = 1 ]; then
    rm -rf "$ETC" "$STATE"
    say "removed $ETC and $STATE"
    if [ "$TEST_MODE" = 1 ] || getent passwd "$SERVICE_USER" >/dev/null; then
        priv userdel "$SERVICE_USER"
    fi
else
    for kept in "$ETC" "$STATE"; do
        if [ -e "$kept" ]; then say "kept $kept (remove it with --purge)"; fi
    done
fi
