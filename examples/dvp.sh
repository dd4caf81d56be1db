#!/usr/bin/env bash
# Delivery versus payment as banks would run it, against a running node:
#
#   examples/dvp.sh                     # starts its own node, delivering to a stand-in chain
#   BLOCKPOST_ENDPOINT=http://HOST:PORT examples/dvp.sh   # against a running node
#
# 1. The exchange reports the trade (FIX 4.4 ExecutionReport) to both banks.
# 2. The seller's back office sends its ISO 20022 sese.023 instruction (deliver against
#    payment) with its signed Bitcoin transaction, sealed to the buyer and to the node's
#    delivery key: the public record shows only the ledger and the txid.
# 3. The buyer's back office sends its instruction (receive against payment), sealed.
# 4. Every party sends finish: the ledger closes the transaction as finished.
# 5. `blockpost tx` shows the settlement: the trade, each side's instruction against it,
#    the parties by real name and LEI, and the transaction the node holds for delivery.
# 6. With its own node (no BLOCKPOST_ENDPOINT): the node delivers the seller's transaction
#    to a regtest stand-in (examples/regtest-chain.py, python3) once every party finished,
#    and records intent, delivered and confirmed (with the Merkle proof) in its ledger.
#
# The messages are in examples/settlement/ (see its README). Uses `blockpost` from PATH,
# else BLOCKPOST_BIN, else builds it. Key files and client state go to a temporary
# directory (or $WORK).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BLOCKPOST_BIN:-}" ]; then BP="$BLOCKPOST_BIN"
elif command -v blockpost >/dev/null 2>&1; then BP=blockpost
else cargo build -q --release -p blockpost-cli --bin blockpost; BP="$PWD/target/release/blockpost"; fi

S=examples/settlement
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
OWN_NODE=""
if [ -z "${BLOCKPOST_ENDPOINT:-}" ]; then
  OWN_NODE=1
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  CHAIN="python3 $PWD/examples/regtest-chain.py $WORK/chain"
  cat > "$WORK/node.toml" <<TOML
[builder]
max_block_delay_ms = 200

[builder.delivery]
broadcast_command = [$(printf '"%s", ' $CHAIN)"broadcast"]
block_command = [$(printf '"%s", ' $CHAIN)"block"]
poll_ms = 200
TOML
  "$BP" up --data "$WORK/node" --listen "127.0.0.1:$PORT" --config "$WORK/node.toml" >"$WORK/node.log" 2>&1 &
  NODE_PID=$!
  trap 'kill $NODE_PID 2>/dev/null; wait $NODE_PID 2>/dev/null' EXIT
  export BLOCKPOST_ENDPOINT="http://127.0.0.1:$PORT"
  for _ in $(seq 1 120); do
    grep -q "block builder active" "$WORK/node.log" && break
    kill -0 "$NODE_PID" 2>/dev/null || break
    sleep 0.25
  done
  if ! grep -q "block builder active" "$WORK/node.log"; then
    echo "the node did not start:" >&2; tail -20 "$WORK/node.log" >&2; exit 1
  fi
fi
export BLOCKPOST_ENDPOINT="${BLOCKPOST_ENDPOINT:-http://127.0.0.1:7700}"
export BLOCKPOST_CONFIG_DIR="${BLOCKPOST_CONFIG_DIR:-$WORK/client}"
export BLOCKPOST_PASSPHRASE="${BLOCKPOST_PASSPHRASE:-example passphrase, use a real one}"
TX="dvp-$(date +%s)-$$"
SUFFIX="${SUFFIX:-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')}"
X="exchange-$SUFFIX"; A="bank-a-$SUFFIX"; B="bank-b-$SUFFIX"

step() { printf '\n== %s\n' "$*"; }

step "keys and registration, each with its LEI (ISO 17442)"
for who in x a b; do "$BP" key new --out "$WORK/$who.key" >/dev/null; done
"$BP" register --key "$WORK/x.key" --address "$X" --name "Example Exchange Inc" --lei 5493000EXCHANGE00016
"$BP" register --key "$WORK/a.key" --address "$A" --name "Bank A AG" --lei 5299000BANKA0AG00068
"$BP" register --key "$WORK/b.key" --address "$B" --name "Bank B Ltd" --lei 5493000BANKB0LTD0083

step "the exchange reports the trade to both banks (FIX 4.4 ExecutionReport)"
"$BP" send --key "$WORK/x.key" --to "$A,$B" --tx "$TX" --trade "$S/trade.fix"

step "a trade naming a party the envelope leaves out is refused (bank-b is not a recipient)"
if "$BP" send --key "$WORK/x.key" --to "$A" --tx "$TX" --trade "$S/trade.fix" 2>"$WORK/refused.txt"; then
  echo "accepted, which is wrong" >&2; exit 1
fi
cat "$WORK/refused.txt"

step "bank-a instructs: deliver 400 US0378331005 against 75,700 USD, with its signed Bitcoin transaction"
"$BP" send --key "$WORK/a.key" --to "$B" --tx "$TX" --instruction "$S/instruction-deliver.xml" \
  --deliver "bitcoin:$S/seller-bitcoin-tx.hex"

step "bank-b instructs: receive against payment (sealed end to end)"
"$BP" send --key "$WORK/b.key" --to "$A" --tx "$TX" --instruction "$S/instruction-receive.xml" --encrypt

step "every party finishes"
"$BP" finish --key "$WORK/a.key" --to "$B,$X" --tx "$TX" "Delivered against payment."
"$BP" finish --key "$WORK/b.key" --to "$A,$X" --tx "$TX" "Paid."
"$BP" finish --key "$WORK/x.key" --to "$A,$B" --tx "$TX" "Trade settled."

step "the settlement, verified in the ledger"
for _ in $(seq 1 60); do
  "$BP" tx "$TX" 2>/dev/null | grep -q "closed" && break
  sleep 0.5
done
"$BP" tx "$TX"

if [ -n "$OWN_NODE" ]; then
  step "delivery: the seller's Bitcoin transaction, handed over once every party finished"
  for _ in $(seq 1 120); do
    "$BP" block latest --json 2>/dev/null | grep -q '"stage": "confirmed"' && break
    sleep 0.25
  done
  H=$("$BP" block latest --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["height"])')
  for h in $(seq 0 "$H"); do
    "$BP" block "$h" --json | python3 -c '
import json, sys
b = json.load(sys.stdin)
for r in b.get("leaves", []):
    if r.get("kind") == "delivery":
        print("  block %s: %s %s transaction %s%s" % (b["height"], r["stage"], r["ledger"], r["transaction"],
              " in its block %d" % r["ledger_height"] if r["stage"] == "confirmed" else ""))
'
  done
  echo "(broadcast to the stand-in chain: $(ls "$WORK/chain/mempool" | wc -l) transaction)"
fi
