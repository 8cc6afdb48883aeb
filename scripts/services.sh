#!/usr/bin/env bash
# Starts the services the test suite needs, idempotently (they may already be running).
#
# Today every test runs in memory: the backends that need Redis, PostgreSQL, DynamoDB (moto)
# and Kinesis (kinesis-local) are not implemented yet (issues #3-#6), and each will add its
# service here when it lands, with a test that fails under CI=true if the service is missing.
set -euo pipefail
echo "services: none needed yet (all tests run in memory)"
