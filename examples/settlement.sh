#!/usr/bin/env bash
# The settlement dialogue between two banks, end to end, against a running node.
#
#   scripts/run &                       # or any node; BLOCKPOST_ENDPOINT says where
#   examples/settlement.sh
#
# Uses `blockpost` from PATH, else BLOCKPOST_BIN, else builds it. Key files and client state
# go to a temporary directory (or $WORK). Each bank reads its inbox after each message:
# signatures are checked against the directory, encrypted bodies are opened.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BLOCKPOST_BIN:-}" ]; then BP="$BLOCKPOST_BIN"
elif command -v blockpost >/dev/null 2>&1; then BP=blockpost
else cargo build -q --release -p blockpost-cli --bin blockpost; BP="$PWD/target/release/blockpost"; fi

WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
export BLOCKPOST_ENDPOINT="${BLOCKPOST_ENDPOINT:-http://127.0.0.1:7700}"
export BLOCKPOST_CONFIG_DIR="${BLOCKPOST_CONFIG_DIR:-$WORK/client}"
export BLOCKPOST_PASSPHRASE="${BLOCKPOST_PASSPHRASE:-example passphrase, use a real one}"
TX="settle-$(date +%s)-$$"
# Addresses must be new on this directory: suffix them so the script can run again.
SUFFIX="${SUFFIX:-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')}"
A="bank-a-$SUFFIX"; B="bank-b-$SUFFIX"

step() { printf '\n== %s\n' "$*"; }

step "keys and registration"
"$BP" key new --out "$WORK/a.key" >/dev/null
"$BP" key new --out "$WORK/b.key" >/dev/null
"$BP" register --key "$WORK/a.key" --address "$A" --name "Bank A AG"
"$BP" register --key "$WORK/b.key" --address "$B" --name "Bank B Ltd"

step "$A -> $B"
"$BP" send --key "$WORK/a.key" --to "$B" --tx "$TX" "I have Y dollars to trade for X stock in Megacorp."
"$BP" inbox --key "$WORK/b.key"

step "$B -> $A (end-to-end encrypted)"
"$BP" send --key "$WORK/b.key" --to "$A" --tx "$TX" --encrypt \
  "I have the stock. I will transfer it to your correspondent account if you confirm your delivery of the money."
"$BP" inbox --key "$WORK/a.key"

step "$A -> $B (end-to-end encrypted)"
"$BP" send --key "$WORK/a.key" --to "$B" --tx "$TX" --encrypt "OK. I transferred."
"$BP" inbox --key "$WORK/b.key"

step "$B -> $A: finish"
"$BP" finish --key "$WORK/b.key" --to "$A" --tx "$TX" --encrypt "OK. I transferred. Transaction finished."
"$BP" inbox --key "$WORK/a.key"

step "$A -> $B: finish (both parties have finished: the ledger closes the transaction)"
"$BP" finish --key "$WORK/a.key" --to "$B" --tx "$TX" "Confirmed. Transaction finished."
"$BP" inbox --key "$WORK/b.key"

step "the public record (metadata for everyone; encrypted bodies stay sealed)"
"$BP" firehose | grep "\[$TX\]"

step "the permanent record: the newest block, verified against the signed ledger"
sleep 1
"$BP" block latest

step "the transaction: finished, each message and the closing record proved in the ledger"
"$BP" tx "$TX"
