#!/usr/bin/env bash
# Mutation testing of the modules that guard data ([tool.mutmut] in pyproject.toml names them and the tests):
# starts the MongoDB and S3 test servers once, runs `mutmut run` with one worker (more with MUTMUT_CHILDREN),
# then prints the score per module. Needs the `mutation` extra: .venv/bin/python -m pip install -e '.[mutation]'.
# Arguments go to `mutmut run` (e.g. mutant names to rerun); `--score` only prints the score so far. Results stay
# in mutants/ (`.venv/bin/mutmut results`, `.venv/bin/mutmut show <name>`); a rerun tests only mutants without a
# result. mutmut never refreshes its copies of the modules it does not mutate (mmlib/testing/stores.py among
# them): after changing one, `rm -rf mutants`.
set -euo pipefail
cd "$(dirname "$0")"
python=.venv/bin/python

# The score per module: killed / checked mutants, where a timeout counts as killed (the tests noticed the mutant).
score() {
    "$python" - <<'EOF'
import collections
import json
import pathlib

from mutmut.stats import status_by_exit_code

counts = {}
for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"].values()
    counts[str(meta.relative_to("mutants"))[:-len(".meta")]] = collections.Counter(status_by_exit_code[c] for c in codes)
counts["all"] = sum(counts.values(), collections.Counter())
print(f"{'module':42} {'mutants':>7} {'unchecked':>9} {'killed':>6} {'timeout':>7} {'survived':>8} {'no tests':>8} "
      "score (of the checked)")
for module, count in counts.items():
    total, checked = sum(count.values()), sum(count.values()) - count["not checked"]
    score = f"{(count['killed'] + count['timeout']) / checked:.1%}" if checked else "-"
    print(f"{module:42} {total:7} {count['not checked']:9} {count['killed']:6} {count['timeout']:7} "
          f"{count['survived']:8} {count['no tests']:8} {score}")
EOF
}
if [ "${1:-}" = "--score" ]; then  # only print the score of the results so far
    score
    exit
fi

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mongo_port=$(free_port)
s3_port=$(free_port)
log_dir=$(mktemp -d)
"$python" -m secantus --host 127.0.0.1 --port "$mongo_port" --storage-path :memory: --standalone \
    --log-level WARNING >"$log_dir/mongo.log" 2>&1 &
mongo_pid=$!
"$python" -m moto.server -H 127.0.0.1 -p "$s3_port" >"$log_dir/s3.log" 2>&1 &
s3_pid=$!
trap 'kill "$mongo_pid" "$s3_pid" 2>/dev/null || true' EXIT

export MMLIB_TEST_MONGO_URI="mongodb://127.0.0.1:$mongo_port" MMLIB_TEST_S3_URI="s3://mmlib-test"
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_ACCESS_KEY_ID=mmlib-test AWS_SECRET_ACCESS_KEY=mmlib-test \
    AWS_DEFAULT_REGION=us-east-1
"$python" - <<'EOF'
import os
import time

import boto3
import pymongo

deadline = time.monotonic() + 60
while True:
    try:
        pymongo.MongoClient(os.environ["MMLIB_TEST_MONGO_URI"], serverSelectionTimeoutMS=500).admin.command("ping")
        boto3.client("s3").create_bucket(Bucket="mmlib-test")
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
EOF

.venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@"
score
