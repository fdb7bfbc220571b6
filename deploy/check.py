"""Static checks of the deploy stack, for CI (no Docker engine needed).

Checks that the compose file defines the stack's services and that every
file it mounts exists, that Prometheus scrapes both catalog instances, that
Grafana's provisioning and dashboard load as YAML/JSON and point at the
provisioned data source, and that every metric name in the dashboard's
PromQL is one the service exports (SPEC section 3), so that a renamed metric
fails here instead of leaving an empty panel. Exits non-zero naming every
violation. Run by deploy/check.sh (which also runs `promtool check config`).
"""

import json
import re
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent

# The metric names of the contract (SPEC section 3).
METRICS = {
    "cache_hits_total",
    "cache_misses_total",
    "request_duration_seconds",
    "cache_size_bytes",
    "cache_entries",
    "cache_evictions_total",
    "cache_l2_errors_total",
    "cache_invalidations_total",
    "cache_loader_coalesced_total",
    "write_behind_pending",
    "db_query_duration_seconds",
}
HISTOGRAMS = {"request_duration_seconds", "db_query_duration_seconds"}
ALLOWED = METRICS | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

# Families the dashboard must chart (issue 6): request rate, hit rate per
# level, latency quantiles, L1 size, L2 errors, invalidations, write-behind.
REQUIRED_IN_DASHBOARD = {
    "request_duration_seconds_count",
    "request_duration_seconds_bucket",
    "cache_hits_total",
    "cache_misses_total",
    "cache_entries",
    "cache_size_bytes",
    "cache_l2_errors_total",
    "cache_invalidations_total",
    "write_behind_pending",
}

SERVICES = {"catalog-a", "catalog-b", "postgres", "redis", "prometheus", "grafana"}
CATALOG_ENV = {"DATABASE_URL", "REDIS_URL", "CATALOG_API_TOKEN"}

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}

errors = []


def fail(message):
    errors.append(message)


def load_yaml(path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        fail(f"{path.relative_to(DEPLOY)}: not readable YAML: {err}")
        return None


def metric_names(expr):
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, $__rate_interval
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr
    )
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        followed_by_call = expr[match.end():].lstrip().startswith("(")
        if not followed_by_call and word.lower() not in KEYWORDS:
            names.add(word)
    return names


def check_compose():
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    if not isinstance(compose, dict):
        fail("docker-compose.yml: not a mapping")
        return
    services = compose.get("services") or {}
    missing = SERVICES - set(services)
    if missing:
        fail(f"docker-compose.yml: services missing: {sorted(missing)}")
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                if not (DEPLOY / source).exists():
                    fail(f"docker-compose.yml: {name} mounts {source}, which does not exist")
    for name in ("catalog-a", "catalog-b"):
        service = services.get(name) or {}
        env = set(service.get("environment") or {})
        if not CATALOG_ENV <= env:
            fail(f"docker-compose.yml: {name} lacks {sorted(CATALOG_ENV - env)}")
        build = service.get("build") or {}
        if not (DEPLOY / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).is_file():
            fail(f"docker-compose.yml: {name} builds from a Dockerfile that does not exist")
    for name, image in (("postgres", "postgres:15"), ("redis", "redis:7")):
        if (services.get(name) or {}).get("image") != image:
            fail(f"docker-compose.yml: {name} should run {image}")


def check_prometheus():
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml") or {}
    targets = {
        target
        for job in config.get("scrape_configs") or []
        for static in job.get("static_configs") or []
        for target in static.get("targets") or []
    }
    for instance in ("catalog-a:8000", "catalog-b:8000"):
        if instance not in targets:
            fail(f"prometheus.yml: does not scrape {instance}")


def check_grafana():
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml") or {}
    uids = {ds.get("uid") for ds in datasources.get("datasources") or []}
    load_yaml(provisioning / "dashboards" / "catalog.yml")

    path = DEPLOY / "grafana" / "dashboards" / "catalog.json"
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        fail(f"grafana/dashboards/catalog.json: not valid JSON: {err}")
        return
    used = set()
    for panel in dashboard.get("panels") or []:
        title = panel.get("title", f"panel {panel.get('id')}")
        targets = panel.get("targets") or []
        if not targets:
            fail(f"catalog.json: panel {title!r} has no queries")
        for target in targets:
            uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
            if uid not in uids:
                fail(f"catalog.json: panel {title!r} uses data source {uid!r}, not provisioned")
            expr = target.get("expr", "")
            names = metric_names(expr)
            if not names:
                fail(f"catalog.json: panel {title!r} queries no metric: {expr!r}")
            for name in sorted(names - ALLOWED):
                fail(f"catalog.json: panel {title!r} uses {name!r}, not a metric the service exports")
            used |= names
    for name in sorted(REQUIRED_IN_DASHBOARD - used):
        fail(f"catalog.json: no panel charts {name}")


def self_test():
    """The PromQL scanner itself: a scanner that found nothing would pass anything."""
    cases = {
        'histogram_quantile(0.99, sum by (le, endpoint) (rate(request_duration_seconds_bucket[$__rate_interval])))':
            {"request_duration_seconds_bucket"},
        'sum(rate(cache_hits_total{cache_type="l1"}[5m])) / ignoring(x) rate(nope_total[1m] offset 5m)':
            {"cache_hits_total", "nope_total"},
        'write_behind_pending > bool 1e3': {"write_behind_pending"},
    }
    for expr, expected in cases.items():
        found = metric_names(expr)
        if found != expected:
            fail(f"check.py self-test: {expr!r} gave {sorted(found)}, expected {sorted(expected)}")


def main():
    self_test()
    check_compose()
    check_prometheus()
    check_grafana()
    for error in errors:
        print(f"deploy check FAILED: {error}", file=sys.stderr)
    if errors:
        return 1
    print("deploy check: compose, Prometheus and Grafana files are consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
