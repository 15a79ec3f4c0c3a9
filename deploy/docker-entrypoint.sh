#!/bin/sh
# Entrypoint of the seedance-worker image.
#
# Docker/Compose secrets are mounted as files under /run/secrets/<name>; the application
# reads its secrets from environment variables. For each known secret file that exists
# and is non-empty, export the matching variable unless it is already set to a non-empty
# value (an explicit environment value always wins). Then exec the command, so it
# replaces this shell and receives SIGTERM from the container runtime directly.
#
# Kubernetes injects the same variables from a Secret (secretKeyRef), so there this
# script is a no-op pass-through.
set -eu

secrets_dir=/run/secrets

load_secret() {
    # $1: file name under /run/secrets, $2: environment variable to set
    file="$secrets_dir/$1"
    current=$(printenv "$2" || true)
    if [ -z "$current" ] && [ -s "$file" ]; then
        # $(...) strips trailing newlines, so files written by `echo` work too.
        value=$(cat "$file")
        export "$2=$value"
    fi
}

load_secret seedance_api_key SEEDANCE_API_KEY
load_secret seedance_notify_secret SEEDANCE_NOTIFY_SECRET
load_secret seedance_intake_token SEEDANCE_INTAKE_TOKEN
load_secret flower_basic_auth FLOWER_BASIC_AUTH

# The prometheus_client multiprocess dir must exist before the first metric is written
# (it is a tmpfs/emptyDir in compose/k8s, so it starts empty on every container start).
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR" 2>/dev/null || true
fi

if [ "$#" -eq 0 ]; then
    echo "seedance-entrypoint: no command given" >&2
    exit 64
fi

exec "$@"
