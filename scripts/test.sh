#!/usr/bin/env bash
# flyteserf's test command (CI runs it through .ci/run):
#
#   bash scripts/test.sh [TRIAL ARGS...]      (default: the whole suite, "tests")
#
# 1. installs Debian's `serf` package if `serf` is not on PATH, without letting
#    the package start its system agent (the interop tests run their own agents);
# 2. installs this checkout in editable mode with its [test] extra;
# 3. runs the trial suite, then mypy on the flyteserf package;
# 4. prints, as its very last line, "N passed, N failed, N skipped", and exits
#    non-zero if trial or mypy failed or trial ran no test.
#
# How the summary counts, from trial's closing "PASSED (...)" / "FAILED (...)":
#   passed  = successes
#   failed  = failures + errors + unexpectedSuccesses
#   skipped = skips + expectedFailures (known-broken "todo" tests pass nothing)
# mypy counts as one more test: passed when clean, failed otherwise.  An error
# raised outside any test (a module that does not import, a dirty reactor)
# counts as one failure.
#
# Needs root (or sudo) only to install serf.  Runs without a terminal or stdin.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/flyteserf-test.XXXXXX")
policy_rc=""

cleanup() {
    if [ -n "$policy_rc" ]; then
        rm -f "$policy_rc"
    fi
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo -n "$@"
    fi
}

install_serf() {
    if command -v serf >/dev/null 2>&1; then
        step "serf: $(command -v serf) ($(serf version | head -n 1))"
        return 0
    fi
    step "installing Debian's serf package (the interop tests run the real agent)"
    # The package's maintainer scripts start a serf agent (systemd unit and
    # init script) on 0.0.0.0:7946 with RPC on 127.0.0.1:7373.  A policy-rc.d
    # that answers 101 stops invoke-rc.d and deb-systemd-invoke from starting
    # it.  An existing policy (Docker images ship one) is left alone.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy_rc=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# Written by flyteserf scripts/test.sh while installing serf.\nexit 101\n' \
            | as_root tee "$policy_rc" >/dev/null
        as_root chmod 755 "$policy_rc"
    fi
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q serf
    if [ -n "$policy_rc" ]; then
        as_root rm -f "$policy_rc"
        policy_rc=""
    fi
    # The package also enables the unit for the next boot: undo that, so a
    # reboot does not bring up an agent on the default ports either.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now serf.service >/dev/null 2>&1 || true
    fi
    command -v serf >/dev/null 2>&1 || {
        echo "error: apt-get installed serf but no serf command is on PATH" >&2
        exit 1
    }
    step "serf: $(command -v serf) ($(serf version | head -n 1))"
}

install_serf

step "installing flyteserf (editable) with its test dependencies"
# Debian's own python3 refuses pip outside a venv (PEP 668); as root on a test
# machine we install anyway.  Other Pythons ignore the variable.
PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -e ".[test]"

step "trial ${*:-tests}"
set +e
"$PYTHON" -m twisted.trial --temp-directory "$work/trial" "${@:-tests}" 2>&1 \
    | tee "$work/trial.out"
trial_status=${PIPESTATUS[0]}
set -e

step "mypy flyteserf"
set +e
"$PYTHON" -m mypy flyteserf
mypy_status=$?
set -e

set +e
summary=$("$PYTHON" - "$work/trial.out" "$trial_status" "$mypy_status" <<'PY'
import re
import sys

path, trial_status, mypy_status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, encoding="utf-8", errors="replace") as handle:
    lines = handle.read().splitlines()
ran = None
counts = {}
for line in lines:
    match = re.fullmatch(r"Ran (\d+) tests? in .*", line.strip())
    if match:
        ran = int(match.group(1))
    match = re.fullmatch(r"(PASSED|FAILED)(?: \((.*)\))?", line.strip())
    if match:
        counts = {"status": match.group(1)}
        for item in (match.group(2) or "").split(", "):
            if "=" in item:
                key, value = item.split("=", 1)
                counts[key] = int(value)
passed = counts.get("successes", 0)
failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
problems = []
if ran is None or "status" not in counts:
    problems.append("trial printed no summary (did it crash?)")
    failed += 1
elif ran == 0:
    problems.append("trial ran no test")
elif trial_status != 0 and failed == 0:
    problems.append(f"trial exited with status {trial_status}")
    failed += 1
if mypy_status == 0:
    passed += 1
else:
    problems.append("mypy found errors")
    failed += 1
for problem in problems:
    print(f"note: {problem}")
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if problems or failed or trial_status or mypy_status else 0)
PY
)
summary_status=$?
set -e

if [ "$summary_status" -ne 0 ]; then
    printf '\ntrial kept its files (test.log has every log line) in %s\n' "$work/trial"
else
    rm -rf "$work"
fi
printf '%s\n' "$summary"
exit "$summary_status"
