#!/bin/sh
# Installs what ic needs on a machine that has only Node.js (>= 20.19) and npm, then runs a task:
#   demo  build ic and run its built-in sample (create, fill, convert in place through every format, verify)
#   test  build ic and run the full test suite (installs qemu-utils, the oracle, when it is missing)
set -eu
task="${1:-test}"
cd "$(dirname "$0")/../.."
export TURBO_TELEMETRY_DISABLED=1 TURBO_NO_UPDATE_NOTIFIER=1 DO_NOT_TRACK=1

if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version 2>/dev/null)" != "10.34.9" ]; then
  echo "bootstrap: installing pnpm 10.34.9" >&2
  npm install -g pnpm@10.34.9 >/dev/null 2>&1 || {
    # Without write access to npm's global prefix, keep pnpm inside the repository.
    npm install --no-save --prefix .tools pnpm@10.34.9 >/dev/null
    PATH="$PWD/.tools/node_modules/.bin:$PATH"; export PATH
  }
fi

# Build and check steps write to a log and print it only when they fail, so that the test runner's summary is
# the only summary line of a run (CI reads the last "N passed, N failed" line).
quiet() {
  log="${TMPDIR:-/tmp}/ic-bootstrap-$$.log"
  if "$@" >"$log" 2>&1; then rm -f "$log"; else status=$?; cat "$log" >&2; rm -f "$log"; exit "$status"; fi
}

quiet pnpm install --frozen-lockfile --reporter=silent
echo "bootstrap: building" >&2
quiet pnpm turbo run build --output-logs=errors-only

case "$task" in
  demo)
    shift || true
    exec node apps/cli/bin/ic.js demo "$@"
    ;;
  test)
    if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
      echo "bootstrap: qemu-img not found; installing qemu-utils (the test oracle)" >&2
      if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
      $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-utils >/dev/null || {
        echo "bootstrap: could not install qemu-utils; install it (Debian/Ubuntu: apt-get install qemu-utils) and run again" >&2
        exit 1
      }
    fi
    echo "bootstrap: type-checking" >&2
    quiet pnpm turbo run typecheck --output-logs=errors-only
    # The shared boundary checker sits beside the repository in the team's workspace and in CI; elsewhere the
    # project's own boundary test (tooling/e2e/test/boundaries.test.ts) checks the same rules.
    if [ -f ../shared/tools/check-boundaries.mjs ]; then quiet node ../shared/tools/check-boundaries.mjs .; fi
    NO_COLOR=1 exec pnpm exec vitest run
    ;;
  *)
    echo "usage: bootstrap.sh demo|test" >&2
    exit 2
    ;;
esac
