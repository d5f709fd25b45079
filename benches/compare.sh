#!/usr/bin/env bash
# failoverfs against the raw directory, bindfs and mergerfs (see benches/compare.py and
# BENCHMARKS.md). One command on a fresh Debian machine, as root:
#
#   benches/compare.sh                      # full run, report on stdout
#   benches/compare.sh --out /tmp/report.md # report to a file
#   benches/compare.sh --quick              # tiny sizes: check that the harness works
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

missing=()
command -v fio >/dev/null || missing+=(fio)
command -v bindfs >/dev/null || missing+=(bindfs)
command -v mergerfs >/dev/null || missing+=(mergerfs)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --locked --bin failoverfs
exec python3 benches/compare.py --binary target/release/failoverfs "$@"
