# Shared by install.sh, update.sh and uninstall.sh: paths, test mode, staging, verification, atomic switches.
# Sourced, not run. Every path is under $ROOT, empty on a real system; with --root DIR (test mode) the
# scripts touch nothing outside DIR and only print the privileged commands (useradd, chown, systemctl, ...).
# shellcheck shell=bash
# shellcheck disable=SC2034  # the paths set here are used by the scripts that source this file

APP=edge-anpr
SERVICE_USER=edge-anpr
ROOT=${ROOT:-}
TEST_MODE=0

set_root() {
    # Fixes every path under the root prefix $1 ("" for the real system), made absolute.
    if [ -n "$1" ]; then ROOT=$(cd "$1" && pwd); else ROOT=""; fi
    if [ -n "$ROOT" ]; then TEST_MODE=1; fi
    OPT=$ROOT/opt/$APP
    RELEASES=$OPT/releases
    MODELS=$OPT/models
    ETC=$ROOT/etc/$APP
    CONFIG=$ETC/config.yaml
    ENV_FILE=$ETC/env
    STATE=$ROOT/var/lib/$APP
    UNIT_DIR=$ROOT/etc/systemd/system
    UNIT=$UNIT_DIR/$APP.service
}

say() { printf '%s: %s\n' "${0##*/}" "$*"; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit "${2:-1}"; }

# Runs a command that changes the system outside the install tree; in test mode only prints it.
priv() {
    if [ "$TEST_MODE" = 1 ]; then
        printf '[test mode] would run: %s\n' "$*"
    else
        "$@"
    fi
}

require_root() {
    if [ "$TEST_MODE" = 0 ] && [ "$(id -u)" != 0 ]; then
        die "run as root (sudo $0 ...), or with --root DIR to try it in a throw-away directory" 2
    fi
}

# Points symlink $1 at $2 atomically: a new link under a temporary name, then rename(2) over the old one,
# so that a reader (systemd starting the service, a health check) sees the old or the new target, never none.
switch_link() {
    local link=$1 target=$2 tmp
    tmp="$(dirname "$link")/.$(basename "$link").new.$$"
    ln -sfn "$target" "$tmp"
    mv -Tf "$tmp" "$link"
}

# The directory name a symlink points at ("" when it does not exist).
link_target() {
    if [ -L "$1" ]; then basename "$(readlink "$1")"; fi
}

# Prints the value of key $2 in JSON file $1 ("" when absent). python3 is on every system we support.
json_get() {
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1])).get(sys.argv[2], "")
print(v if isinstance(v, str) else "")' "$1" "$2"
}

# Verifies a model set directory: detector and reader present, each .tflite matching the sha256 of its
# .json, each NAME_edgetpu.tflite matching edgetpu_sha256 in NAME.json. Prints one line per file.
verify_models() {
    local dir=$1 ok=0 f json key want got
    for f in detector.tflite reader.tflite; do
        [ -f "$dir/$f" ] || { printf 'FAIL  %s: missing\n' "$dir/$f"; ok=1; }
    done
    for f in "$dir"/*.tflite; do
        [ -f "$f" ] || continue
        case $f in
            *_edgetpu.tflite) json=${f%_edgetpu.tflite}.json; key=edgetpu_sha256 ;;
            *) json=${f%.tflite}.json; key=sha256 ;;
        esac
        if [ ! -f "$json" ]; then
            printf 'FAIL  %s: no metadata %s\n' "$f" "$json"; ok=1; continue
        fi
        want=$(json_get "$json" "$key") || { printf 'FAIL  %s: not valid JSON\n' "$json"; ok=1; continue; }
        if [ -z "$want" ]; then
            printf 'FAIL  %s: %s records no %s\n' "$f" "$json" "$key"; ok=1; continue
        fi
        got=$(sha256sum "$f" | cut -d' ' -f1)
        if [ "$got" = "$want" ]; then
            printf 'ok    %s: sha256 %s\n' "$f" "${got:0:12}"
        else
            printf 'FAIL  %s: sha256 %s, %s records %s\n' "$f" "${got:0:12}" "$json" "${want:0:12}"; ok=1
        fi
    done
    return $ok
}

# Content id of a model set: the recorded hashes of its files, so the same set always lands in the same
# directory (reinstalling it is a no-op) and a different one never overwrites it.
models_id() {
    local dir=$1
    (cd "$dir" && cat ./*.json | sha256sum | cut -c1-12)
}

# Copies model set $1 into $MODELS/<id>/ after verifying it; prints the id. Nothing is switched here.
stage_models() {
    local src=$1 id dest tmp
    [ -d "$src" ] || die "$src: model directory not found"
    say "verifying the model set in $src" >&2
    verify_models "$src" >&2 || die "$src: model files do not match their recorded sha256; nothing was changed"
    id=$(models_id "$src")
    dest=$MODELS/$id
    if [ -f "$dest/.complete" ]; then
        say "model set $id is already installed in $dest" >&2
    else
        mkdir -p "$MODELS"
        tmp=$MODELS/.$id.tmp.$$
        rm -rf "$tmp"
        mkdir -p "$tmp"
        cp -p "$src"/*.tflite "$src"/*.json "$tmp"/
        if [ -f "$src/MODEL_CARD.md" ]; then cp -p "$src/MODEL_CARD.md" "$tmp"/; fi
        chmod 0755 "$tmp"
        chmod 0644 "$tmp"/*
        # The copy is verified again: what runs is what was checked, not what was read before copying.
        verify_models "$tmp" >/dev/null || { rm -rf "$tmp"; die "$tmp: copy does not verify (disk full?)"; }
        touch "$tmp/.complete"
        rm -rf "$dest"
        mv -T "$tmp" "$dest"
        say "model set $id installed in $dest" >&2
    fi
    printf '%s\n' "$id"
}

# Release id of checkout $1: the package version and a hash of the files that go into the release.
release_id() {
    local src=$1 version digest
    version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$src/pyproject.toml" | head -n1)
    digest=$(cd "$src" && find edge pyproject.toml README.md -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-8)
    printf '%s-%s\n' "${version:-0}" "$digest"
}

# Whether Debian's picamera2 is there (a Raspberry Pi): the venv must then see the system site-packages.
have_system_picamera2() {
    python3 -c 'import picamera2' >/dev/null 2>&1
}

# Builds release $RELEASES/<id> from checkout $1: a copy of the sources and a venv with only the edge's
# dependencies. With $VENV_FROM set (tests, development) the venv is a link to that existing one instead.
# Prints the id.
stage_release() {
    local src=$1 id dest venv_args=()
    id=$(release_id "$src")
    dest=$RELEASES/$id
    if [ -f "$dest/.complete" ]; then
        say "release $id is already installed in $dest" >&2
        printf '%s\n' "$id"
        return 0
    fi
    rm -rf "$dest"  # a half-built release from an interrupted run
    mkdir -p "$dest/src"
    (cd "$src" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - edge pyproject.toml README.md deploy) |
        tar -xf - -C "$dest/src"
    if [ -n "${VENV_FROM:-}" ]; then
        [ -x "$VENV_FROM/bin/python" ] || die "$VENV_FROM: not a virtual environment (no bin/python)"
        ln -sfn "$VENV_FROM" "$dest/venv"
        say "release $id uses the existing environment $VENV_FROM" >&2
    else
        if have_system_picamera2; then venv_args+=(--system-site-packages); fi
        say "creating the environment of release $id ${venv_args[*]} (a few minutes on a Pi)" >&2
        python3 -m venv "${venv_args[@]}" "$dest/venv" >&2 || die "python3 -m venv failed (apt-get install python3-venv)"
        "$dest/venv/bin/python" -m pip install --quiet --upgrade pip >&2 || die "pip upgrade failed (network?)"
        "$dest/venv/bin/python" -m pip install --quiet "$dest/src[daemon]" >&2 ||
            die "pip install of $dest/src[daemon] failed (network? see the lines above)"
        if [ ${#venv_args[@]} -gt 0 ]; then
            # Debian's simplejpeg (imported by picamera2) is built for Debian's numpy 1.x; the venv's numpy 2
            # (OpenCV needs it) breaks it. A wheel from PyPI, built for numpy 2, shadows it inside the venv.
            "$dest/venv/bin/python" -m pip install --quiet --ignore-installed --no-deps simplejpeg >&2 ||
                say "warning: simplejpeg for numpy 2 not installed; picamera2 may fail to import" >&2
        fi
    fi
    touch "$dest/.complete"
    printf '%s\n' "$id"
}

# Runs the health verb of the current release against the config, with the service's environment file
# (the broker password) and, on a real system, as the service user. From / so that no checkout in the
# working directory shadows the installed package.
run_health() {
    local python=$OPT/current/venv/bin/python
    (
        cd / || exit 1
        if [ -r "$ENV_FILE" ]; then
            set -a
            # shellcheck disable=SC1090  # the file is the admin's, written by install.sh
            . "$ENV_FILE"
            set +a
        fi
        if [ "$TEST_MODE" = 1 ]; then
            "$python" -m edge health --config "$CONFIG"
        else
            runuser -u "$SERVICE_USER" -- "$python" -m edge health --config "$CONFIG"
        fi
    )
}
