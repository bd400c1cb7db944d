#!/usr/bin/env bash
# Updates an installation made by install.sh: a new release (this checkout) and/or a new model set is
# installed next to the current one, verified, switched in atomically, health-checked, and rolled back
# when the check fails.
#
#   sudo deploy/update.sh --models DIR       # a new model set (each .tflite must match its recorded sha256)
#   sudo deploy/update.sh --release          # the code of this checkout (git pull first)
#   sudo deploy/update.sh --check            # only run the health check on what is installed
#   deploy/update.sh --root DIR ...          # test mode (see install.sh)
#
# Exit codes: 0 updated (or nothing to do) and healthy; 1 refused before switching (verification or
# staging failed; nothing changed); 2 usage; 3 the health check failed after switching and the previous
# release/model set is back; 4 the rollback failed too (a person is needed).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(dirname "$HERE")
# shellcheck source=deploy/lib.sh
. "$HERE/lib.sh"

usage() {
    cat <<EOF
usage: $0 [--root DIR] [--release] [--models DIR] [--check] [--venv-from VENV] [--keep N]

  --release         install this checkout ($SRC) as a new release and switch to it
  --models DIR      install the model set in DIR and switch to it
  --check           run the health check only (models, a test frame, spool, broker)
  --keep N          releases and model sets to keep on disk, the current one included (default 3)
  --root DIR        test mode: work under DIR; systemctl and runuser are printed, not run
  --venv-from VENV  a new release uses this existing virtual environment (tests, development)
EOF
}

root="" do_release=0 models_src="" check=0 keep=3 VENV_FROM=""
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --release) do_release=1; shift ;;
        --models) models_src=${2:?--models needs a directory}; shift 2 ;;
        --check) check=1; shift ;;
        --keep) keep=${2:?--keep needs a number}; shift 2 ;;
        --venv-from) VENV_FROM=${2:?--venv-from needs a directory}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" 2 ;;
    esac
done
set_root "$root"
require_root
if [ "$do_release" = 0 ] && [ -z "$models_src" ] && [ "$check" = 0 ]; then
    usage >&2; die "nothing to do: give --release, --models DIR or --check" 2
fi
case $keep in ''|*[!0-9]*|0|1) die "--keep: a number of at least 2 (the current one and one to roll back to)" 2 ;; esac
[ -L "$OPT/current" ] || die "$OPT/current: no release installed; run deploy/install.sh first"
if [ "$do_release" = 1 ]; then
    # The release's pip install (lib.sh: stage_release) takes the versions the tests passed with, not the newest.
    [ -f "$HERE/constraints.txt" ] || die "$HERE/constraints.txt: not found (it pins the versions a release installs)"
    export PIP_CONSTRAINT="$HERE/constraints.txt"
fi
[ -f "$CONFIG" ] || die "$CONFIG: no configuration; run deploy/install.sh first"

restart_service() {
    # Type=notify: restart returns once the daemon said READY=1, or fails when it exited before.
    if [ "$TEST_MODE" = 1 ] || systemctl is-enabled --quiet "$APP.service" 2>/dev/null; then
        priv systemctl restart "$APP.service"
    fi
}

healthy() {
    say "health check"
    if ! restart_service; then
        say "the service did not start: journalctl -u $APP -n 50"
        return 1
    fi
    run_health
}

if [ "$check" = 1 ] && [ "$do_release" = 0 ] && [ -z "$models_src" ]; then
    run_health
    exit
fi

# 1. Stage and verify everything before switching anything.
old_release=$(link_target "$OPT/current")
old_models=$(link_target "$MODELS/current")
new_release=$old_release new_models=$old_models
if [ "$do_release" = 1 ]; then
    new_release=$(stage_release "$SRC") || die "staging the release failed; nothing was changed"
fi
if [ -n "$models_src" ]; then
    new_models=$(stage_models "$models_src")
    if ! grep -qF "$MODELS/current" "$CONFIG"; then
        say "warning: $CONFIG does not point detection.models at $MODELS/current; the new set will not be used"
    fi
fi
if [ "$new_release" = "$old_release" ] && [ "$new_models" = "$old_models" ]; then
    say "release $old_release and model set ${old_models:-none} are already current; nothing to do"
    exit 0
fi

# 2. Switch (each link atomically), restart, check.
switch_to() {  # release, model set
    if [ -n "$1" ]; then switch_link "$OPT/current" "releases/$1"; fi
    if [ -n "$2" ]; then switch_link "$MODELS/current" "$2"; fi
}
say "switching: release ${old_release:-none} -> $new_release, model set ${old_models:-none} -> $new_models"
switch_to "$new_release" "$new_models"
if healthy; then
    say "update done: release $new_release, model set $new_models"
else
    say "health check failed: rolling back to release $old_release, model set ${old_models:-none}"
    if [ -n "$old_models" ]; then
        switch_to "$old_release" "$old_models"
    else  # there was no model set before this one
        switch_to "$old_release" ""
        rm -f "$MODELS/current"
    fi
    if healthy; then
        say "rolled back: release $old_release, model set ${old_models:-none} are current again"
        exit 3
    fi
    die "the rollback is not healthy either: see journalctl -u $APP and the lines above" 4
fi

# 3. Keep the newest $keep releases and model sets on disk; never the current one or the one before it.
prune() {
    local dir=$1 current=$2 previous=$3 name
    find "$dir" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%T@ %f\n' | sort -rn | cut -d' ' -f2 |
        tail -n +"$((keep + 1))" | while read -r name; do
            if [ "$name" != "$current" ] && [ "$name" != "$previous" ]; then
                say "removing old $(basename "$dir") $name"
                rm -rf "${dir:?}/$name"
            fi
        done
}
prune "$RELEASES" "$new_release" "$old_release"
prune "$MODELS" "$new_models" "$old_models"
