#!/usr/bin/env bash
# Screenshots of the admin console's main pages (PNG, not committed): starts a server in
# process, seeds a tenant, signs in through headless Chromium. Usage: tests/console-screenshots.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-target/console-screenshots}"
cargo run -q -p gatehouse-tests --example console_screenshots -- "$dir"
