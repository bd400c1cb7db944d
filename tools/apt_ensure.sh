#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are missing: the system side of `make demo`,
# `make test`, `make test-edge` and `make soak`. apt-get runs through sudo when not root.
#
#   tools/apt_ensure.sh PACKAGE...
#
# Another apt (unattended-upgrades, a second terminal, a desktop updater) may hold apt's or dpkg's lock.
# Then this says which process holds it and waits, retrying every APT_LOCK_POLL_S seconds (default 5), for
# up to APT_LOCK_TIMEOUT seconds (default 600), instead of failing at once with apt's lock error.
set -euo pipefail

timeout=${APT_LOCK_TIMEOUT:-600}
poll=${APT_LOCK_POLL_S:-5}
case $timeout in ''|*[!0-9]*) echo "apt_ensure.sh: APT_LOCK_TIMEOUT: a number of seconds, not '$timeout'" >&2; exit 2 ;; esac

missing=()
for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "installing system packages: ${missing[*]}"
if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT

# apt-get "$@"; while it fails only because another process holds a lock of apt's, says so once and retries.
# Its other errors, or the lock error after the timeout, are shown and returned as they are.
apt_get() {
    local deadline=$((SECONDS + timeout)) said=0 rc holder lock
    while :; do
        rc=0
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@" 2>"$errors" || rc=$?
        if [ "$rc" = 0 ] || ! grep -q "Could not get lock" "$errors"; then
            cat "$errors" >&2
            return "$rc"
        fi
        # Said before the deadline is checked: SECONDS counts whole seconds, so a first try that straddles a
        # second's edge may already be past a short deadline, and the user is still told who holds the lock.
        if [ "$said" = 0 ]; then
            lock=$(sed -n 's/.*Could not get lock \([^ ]*[^ .]\).*/\1/p' "$errors" | head -n1)
            holder=$(sed -n 's/.*It is held by process \([0-9]* ([^)]*)\).*/\1/p' "$errors" | head -n1)
            echo "another apt or dpkg is running (${holder:+process $holder holds }${lock:-its lock}):" \
                "waiting up to ${timeout} s for it to finish (APT_LOCK_TIMEOUT) ..." >&2
            said=1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "apt is still locked after ${timeout} s (APT_LOCK_TIMEOUT); giving up:" >&2
            cat "$errors" >&2
            return "$rc"
        fi
        sleep "$poll"
    done
}

apt_get update -qq
apt_get install -y -qq "${missing[@]}" >/dev/null
