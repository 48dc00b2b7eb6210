#!/usr/bin/env bash
# System packages the test suite drives as real programs: Debian's chromium (the review page is tested
# in a headless browser), docker-compose (1.29: tests/test_deployment.py validates docker-compose.yml
# with `docker-compose config`; no Docker engine is needed) and postgresql (tests/dags/test_local_executor.py
# runs Airflow on a throwaway PostgreSQL cluster; Debian keeps initdb and pg_ctl in
# /usr/lib/postgresql/<version>/bin, off PATH; tests/dags/test_celery_executor.py too), redis-server
# (the Celery broker of tests/dags/test_celery_executor.py, which runs docker-compose.yml's topology without
# a Docker engine). Installed with apt when missing and we may
# (root, apt-get present); otherwise the tests that need them skip and say why. Idempotent: does nothing
# when everything is there.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: ${missing[*]} not installed and apt-get is not usable here (needs root on Debian);" \
         "the tests that need them will skip. Install with: apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 0
fi
echo "installing system packages for the tests: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || echo "warning: apt-get update failed; trying the cached package lists" >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
