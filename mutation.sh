#!/usr/bin/env bash
# Mutation testing of the modules that guard data ([tool.mutmut] in pyproject.toml names them and the tests):
# starts the MongoDB and S3 test servers once, runs `mutmut run` with one worker (more with MUTMUT_CHILDREN),
# then prints the score per module. Needs the `mutation` extra: .venv/bin/python -m pip install -e '.[mutation]'.
#
#   bash mutation.sh                every mutant without a result (all of them: many hours on 2 cores)
#   bash mutation.sh --sample N     a uniform random sample of N mutants, drawn once (fixed seed) and kept in
#                                   mutants/sample.txt: a rerun tests those of them without a result
#   bash mutation.sh --score        only print the scores so far (all results, then the sample's)
#   bash mutation.sh NAME...        these mutants (names, or patterns such as 'mmlib.util.delta.*'), rerun
#
# Results stay in mutants/ (`.venv/bin/mutmut results`, `.venv/bin/mutmut show <name>`); mutmut keeps the result
# of every mutant whose function did not change. It copies the modules it does not mutate into mutants/ only
# once: this script refreshes those copies before each run, so the tests import the current helpers and
# conformance suites (mmlib/testing/stores.py). Changing the test list in pyproject.toml resets every result.
set -euo pipefail
cd "$(dirname "$0")"
python=.venv/bin/python
sample_file=mutants/sample.txt
sample_seed=20261201

# The score per module: killed / checked mutants, where a timeout counts as killed (the tests noticed the mutant).
# For the sample, also a 95% confidence interval of the score of all mutants.
score() {
    "$python" - "$sample_file" <<'SCORE'
import collections
import json
import math
import pathlib
import sys

from mutmut.stats import status_by_exit_code

status, module_of = {}, {}
for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
    module = str(meta.relative_to("mutants"))[:-len(".meta")]
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        status[name], module_of[name] = status_by_exit_code[code], module


def table(names, title):
    counts = collections.defaultdict(collections.Counter)
    for name in names:
        counts[module_of[name]][status[name]] += 1
        counts["all"][status[name]] += 1
    print(f"{title}\n{'module':42} {'mutants':>7} {'unchecked':>9} {'killed':>6} {'timeout':>7} {'survived':>8} "
          f"{'no tests':>8} score (of the checked)")
    for module in sorted(counts, key=lambda module: (module == "all", module)):
        count = counts[module]
        total, checked = sum(count.values()), sum(count.values()) - count["not checked"]
        noticed = count["killed"] + count["timeout"]
        score = f"{noticed / checked:.1%}" if checked else "-"
        print(f"{module:42} {total:7} {count['not checked']:9} {count['killed']:6} {count['timeout']:7} "
              f"{count['survived']:8} {count['no tests']:8} {score}")
    return noticed, checked


table(status, "All mutants with a result so far:")
sample = pathlib.Path(sys.argv[1])
if sample.exists():
    print()
    drawn = sample.read_text().split()
    kept = [name for name in drawn if name in status]  # mutants of functions changed since the draw are gone
    noticed, checked = table(kept, f"The random sample in {sample} ({len(drawn) - len(kept)} of its "
                                   f"{len(drawn)} mutants gone with the code they mutated):")
    if checked:
        rate = noticed / checked
        spread = 1.96 * math.sqrt(rate * (1 - rate) / checked)
        print(f"score of all mutants, estimated from the {checked} checked of the sample: {rate:.1%} "
              f"(95% interval {rate - spread:.1%} to {rate + spread:.1%})")
SCORE
}
if [ "${1:-}" = "--score" ]; then
    score
    exit
fi

# mutmut copies the modules it does not mutate only when mutants/ lacks them: refresh the stale copies.
if [ -d mutants/mmlib ]; then
    "$python" - <<'REFRESH'
import fnmatch
import pathlib
import shutil
import tomllib

mutated = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
for source in pathlib.Path("mmlib").rglob("*"):
    copy = pathlib.Path("mutants") / source
    if (source.is_file() and "__pycache__" not in source.parts
            and not any(fnmatch.fnmatch(str(source), pattern) for pattern in mutated)
            and (not copy.exists() or copy.read_bytes() != source.read_bytes())):
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, copy)
REFRESH
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
"$python" - <<'WAIT'
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
WAIT

run() { .venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@"; }
if [ "${1:-}" = "--sample" ]; then
    size=${2:?--sample needs the number of mutants}
    if [ ! -f mutants/mutmut-stats.json ]; then
        run 'mmlib.persistence.x___getattr__*'  # generates every mutant and maps the tests to functions
    fi
    # The sample, and those of its mutants that have no result yet.
    pending=$("$python" - "$size" "$sample_seed" "$sample_file" <<'SAMPLE'
import json
import pathlib
import random
import sys

size, seed, out = int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
codes = {name: code for meta in pathlib.Path("mutants").rglob("*.py.meta")
         for name, code in json.loads(meta.read_text())["exit_code_by_key"].items()}
drawn = out.read_text().split() if out.exists() else []
if not drawn:  # a new sample; else the same one, less the mutants of functions changed since
    drawn = random.Random(seed).sample(sorted(codes), min(size, len(codes)))
sample = sorted(name for name in drawn if name in codes)
out.write_text("\n".join(sample) + "\n")
print(" ".join(name for name in sample if codes[name] is None))
SAMPLE
)
    if [ -n "$pending" ]; then
        # shellcheck disable=SC2086  # mutant names hold no spaces
        run $pending
    fi
else
    run "$@"
fi
score
