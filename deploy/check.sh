#!/usr/bin/env bash
# Static checks of the deploy stack (run by .ci/run; no Docker engine needed):
# `promtool check config` on the Prometheus configuration, then deploy/check.py
# (compose services and mounts, scrape targets, Grafana files, and the
# dashboard's metric names against the SPEC's). Installs promtool (Debian's
# `prometheus` package) and PyYAML when missing. Exits non-zero on any
# violation.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v promtool >/dev/null; then
  echo "installing promtool (Debian package prometheus)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "installing PyYAML"
  python3 -m pip install --quiet pyyaml
fi

promtool check config prometheus/prometheus.yml
python3 check.py
