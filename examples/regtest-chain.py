#!/usr/bin/env python3
"""A stand-in for a Bitcoin regtest node, for examples/dvp.sh: the two commands a
Blockpost node's [builder.delivery] calls.

    regtest-chain.py DIR broadcast RAWHEX   takes a transaction into the mempool (DIR/mempool)
    regtest-chain.py DIR block TXID         prints the raw block (hex) holding TXID; the first
                                            time it is asked, it mines one: a coinbase (BIP 34
                                            height) and the transaction, at regtest difficulty

Legacy (non-segwit) transactions only: the txid is SHA-256d of the raw bytes. No node, no
network: enough to show a delivery recorded and confirmed with a Merkle proof that
Blockpost's auditor and anyone else can check.
"""
import hashlib
import os
import struct
import sys
import time


def sha256d(b):
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def varint(n):
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def merkle_root(txids):
    level = list(txids)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def coinbase(height):
    h = height.to_bytes((height.bit_length() + 8) // 8, "little")
    script_sig = bytes([len(h)]) + h
    out_script = b"\x6a\x04" + b"dvp!"
    return (
        struct.pack("<i", 2)
        + b"\x01" + b"\x00" * 32 + b"\xff\xff\xff\xff"
        + varint(len(script_sig)) + script_sig + b"\xff\xff\xff\xff"
        + b"\x01" + struct.pack("<q", 50 * 100_000_000) + varint(len(out_script)) + out_script
        + struct.pack("<I", 0)
    )


def mine(dir_, raw):
    blocks = os.path.join(dir_, "blocks")
    os.makedirs(blocks, exist_ok=True)
    height = 101 + len(os.listdir(blocks))
    txs = [coinbase(height), raw]
    root = merkle_root([sha256d(t) for t in txs])
    prev_file = os.path.join(dir_, "tip")
    prev = bytes.fromhex(open(prev_file).read()) if os.path.exists(prev_file) else b"\x00" * 32
    for nonce in range(1 << 32):
        header = (
            struct.pack("<i", 0x20000000) + prev + root
            + struct.pack("<I", int(time.time())) + struct.pack("<I", 0x207FFFFF)
            + struct.pack("<I", nonce)
        )
        # Regtest target: 0x7fffff * 256^(0x20 - 3); the hash as a little-endian number.
        if int.from_bytes(sha256d(header), "little") <= 0x7FFFFF << (8 * (0x20 - 3)):
            break
    open(prev_file, "w").write(sha256d(header).hex())
    return header + varint(len(txs)) + b"".join(txs)


def main():
    dir_, cmd, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(dir_, exist_ok=True)
    pool = os.path.join(dir_, "mempool")
    if cmd == "broadcast":
        raw = bytes.fromhex(arg.strip())
        if raw[4:6] == b"\x00\x01":
            sys.exit("this stand-in takes legacy transactions only")
        txid = sha256d(raw)[::-1].hex()
        os.makedirs(pool, exist_ok=True)
        open(os.path.join(pool, txid), "w").write(raw.hex())
        print(txid)
    elif cmd == "block":
        path = os.path.join(dir_, "blocks", arg + ".hex")
        if not os.path.exists(path):
            tx = os.path.join(pool, arg)
            if not os.path.exists(tx):
                return  # unknown, or not broadcast: unconfirmed
            block = mine(dir_, bytes.fromhex(open(tx).read()))
            open(path, "w").write(block.hex())
        print(open(path).read())
    else:
        sys.exit("usage: regtest-chain.py DIR broadcast RAWHEX | block TXID")


if __name__ == "__main__":
    main()
