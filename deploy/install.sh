#!/usr/bin/env bash
# Installs the edge ANPR daemon from this checkout as a systemd service. Safe to run again: what is
# there is kept (the configuration always; the installed release and model set too, see update.sh).
#
#   sudo deploy/install.sh [--models DIR] [--no-apt] [--start]
#   deploy/install.sh --root DIR [--venv-from VENV] ...     # test mode: everything under DIR, no side effects
#
# Layout:
#   /opt/edge-anpr/releases/<version>-<hash>/{src,venv}   one per release; /opt/edge-anpr/current -> one of them
#   /opt/edge-anpr/models/<id>/                           one per model set; /opt/edge-anpr/models/current -> one
#   /etc/edge-anpr/config.yaml, env                       the configuration and secrets (never overwritten)
#   /var/lib/edge-anpr/                                   the spool (the unit's StateDirectory)
#   /etc/systemd/system/edge-anpr.service                 the unit
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(dirname "$HERE")
# shellcheck source=deploy/lib.sh
. "$HERE/lib.sh"

usage() {
    cat <<EOF
usage: $0 [--root DIR] [--models DIR] [--venv-from VENV] [--no-apt] [--start]

  --root DIR        test mode: install under DIR; useradd, chown, apt-get and systemctl are printed, not run
  --models DIR      the model set to install first (default: $SRC/edge/models)
  --venv-from VENV  use this existing virtual environment instead of building one (tests, development)
  --no-apt          do not install the Debian packages (python3-venv)
  --start           start the service at the end (default: enable it only; edit the configuration first)
EOF
}

root="" models_src=$SRC/edge/models apt=1 start=0 VENV_FROM=""
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --models) models_src=${2:?--models needs a directory}; shift 2 ;;
        --venv-from) VENV_FROM=${2:?--venv-from needs a directory}; shift 2 ;;
        --no-apt) apt=0; shift ;;
        --start) start=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" 2 ;;
    esac
done
if [ -n "$root" ]; then mkdir -p "$root"; fi
set_root "$root"
require_root
if [ ! -f "$SRC/pyproject.toml" ] || [ ! -d "$SRC/edge" ]; then
    die "$SRC: not an edge-anpr checkout (no pyproject.toml, edge/)"
fi
# The release's pip install (lib.sh: stage_release) takes the versions the tests passed with, not the newest.
[ -f "$HERE/constraints.txt" ] || die "$HERE/constraints.txt: not found (it pins the versions a release installs)"
export PIP_CONSTRAINT="$HERE/constraints.txt"

# 1. System packages: venv support; on a Raspberry Pi the camera stack comes from Debian.
if [ "$apt" = 1 ]; then
    pkgs=(python3-venv python3-pip)
    if grep -qs "Raspberry Pi" /proc/device-tree/model; then pkgs+=(python3-picamera2); fi
    missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        priv apt-get update -qq
        priv env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
fi

# 2. The service user: a system account without a login shell or a home of its own.
if [ "$TEST_MODE" = 1 ] || ! getent passwd "$SERVICE_USER" >/dev/null; then
    say "creating the system user $SERVICE_USER"
    priv useradd --system --user-group --home-dir "/var/lib/$APP" --no-create-home \
        --shell /usr/sbin/nologin --comment "edge ANPR daemon" "$SERVICE_USER"
fi
# Cameras (video), a USB Coral (plugdev, from libedgetpu's udev rule), a PCIe Coral (apex): only those present.
for group in video plugdev apex; do
    if getent group "$group" >/dev/null; then priv usermod -aG "$group" "$SERVICE_USER"; fi
done

# 3. Directories. /opt is root's (the service cannot change its own code); the spool is the service's.
mkdir -p "$OPT" "$RELEASES" "$MODELS" "$ETC" "$STATE" "$UNIT_DIR"
chmod 0755 "$OPT" "$RELEASES" "$MODELS"
chmod 0750 "$ETC" "$STATE"
priv chown "root:$SERVICE_USER" "$ETC"
priv chown "$SERVICE_USER:$SERVICE_USER" "$STATE"

# 4. The release (code + venv) and the model set, each switched in only when none is installed yet:
#    replacing a running installation is update.sh's job (it health-checks and rolls back).
release=$(stage_release "$SRC")
if [ -z "$(link_target "$OPT/current")" ]; then
    switch_link "$OPT/current" "releases/$release"
    say "release $release is current"
elif [ "$(link_target "$OPT/current")" != "$release" ]; then
    say "release $(link_target "$OPT/current") stays current; switch to $release with: deploy/update.sh --release"
fi
if [ -d "$models_src" ] && compgen -G "$models_src/*.tflite" >/dev/null; then
    models=$(stage_models "$models_src")
    if [ -z "$(link_target "$MODELS/current")" ]; then
        switch_link "$MODELS/current" "$models"
        say "model set $models is current"
    elif [ "$(link_target "$MODELS/current")" != "$models" ]; then
        say "model set $(link_target "$MODELS/current") stays current; switch with: deploy/update.sh --models $models_src"
    fi
elif [ -z "$(link_target "$MODELS/current")" ]; then
    say "warning: no model set in $models_src; install one with: deploy/update.sh --models DIR"
fi

# 5. Configuration: written once, never overwritten; the full example is refreshed beside it for reference.
install -m 0644 "$HERE/config.example.yaml" "$ETC/config.example.yaml"
if [ -e "$CONFIG" ]; then
    say "keeping the configuration $CONFIG"
else
    install -m 0640 "$HERE/config.device.yaml" "$CONFIG"
    priv chown "root:$SERVICE_USER" "$CONFIG"
    say "wrote $CONFIG: set camera and mqtt there"
fi
if [ ! -e "$ENV_FILE" ]; then
    install -m 0640 /dev/null "$ENV_FILE"
    printf '%s\n' "# Environment of the edge-anpr service (systemd EnvironmentFile): secrets kept out of config.yaml." \
        "# ANPR_MQTT_PASSWORD=..." "# CAMERA_PASSWORD=...   (for a \${CAMERA_PASSWORD} placeholder in config.yaml)" \
        >"$ENV_FILE"
    priv chown "root:$SERVICE_USER" "$ENV_FILE"
fi

# 6. The unit (ours: replaced on every install), enabled at boot.
install -m 0644 "$HERE/edge-anpr.service" "$UNIT"
priv systemctl daemon-reload
priv systemctl enable "$APP.service"
if [ "$start" = 1 ]; then
    priv systemctl restart "$APP.service"
else
    # A running service picks up a repaired unit; a stopped one stays stopped until the config is edited.
    priv systemctl try-restart "$APP.service"
fi

say "installed. Next:"
cat <<EOF
  1. edit ${CONFIG#"$ROOT"} (camera, mqtt) and, for secrets, ${ENV_FILE#"$ROOT"}
  2. check it:  sudo ${0%/*}/update.sh --check   (models, a test frame, spool, broker)
  3. start it:  sudo systemctl start $APP && journalctl -u $APP -f
EOF
