#!/usr/bin/env bash
# A middle call on the warm machine: park the payload piece this call carried (.xferN) in /tmp.
set -euo pipefail
mkdir -p /tmp/xfer && cp .xfer*/payload.part* /tmp/xfer/ && ls -la /tmp/xfer
