#!/usr/bin/env python3
"""An independent verifier for AeroDB's checkpoints and proofs, written from the C2SP signed-note and
tlog-checkpoint specs and RFC 9162 §2.1.3.2 / §2.1.4.2, sharing no code with the Rust implementation.

Usage: independent_verify.py CASE.json
CASE.json: {"vkey": str, "note": str,
            "inclusion": [{"record": hex, "index": int, "size": int, "proof": [hex], "root": hex}],
            "consistency": [{"old": int, "new": int, "old_root": hex, "new_root": hex, "proof": [hex]}]}
The checkpoint's root and size are taken from the verified note and must match the proofs that name its size.
Each inclusion case carries the canonical record bytes: the verifier checks that the record's CommitId (trailer
bytes -40..-32, little-endian) is index + 1 and computes the leaf itself, SHA-256(0x00 || SHA-256(record)).
Exit 0 when everything verifies; 1 with a message on the first failure.
"""
import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.exceptions import InvalidSignature


def fail(msg):
    print(f"REJECT: {msg}")
    sys.exit(1)


def parse_vkey(s):
    name, key_id_hex, key_b64 = s.strip().split("+", 2)
    raw = base64.b64decode(key_b64, validate=True)
    if len(raw) != 33 or raw[0] != 0x01:
        fail("verifier key is not an Ed25519 key")
    pub = raw[1:]
    want = hashlib.sha256(name.encode() + b"\n" + b"\x01" + pub).digest()[:4]
    if want.hex() != key_id_hex:
        fail("verifier key id does not match its key")
    return name, want, Ed25519PublicKey.from_public_bytes(pub)


def open_note(note, name, key_id, pub):
    split = note.rfind("\n\n")
    if split < 0:
        fail("no blank line before the signatures")
    text, sigs = note[: split + 1], note[split + 2 :]
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            fail("signature line without the em dash")
        signer, b64 = line[2:].split(" ", 1)
        raw = base64.b64decode(b64, validate=True)
        if signer != name or raw[:4] != key_id:
            continue
        try:
            pub.verify(raw[4:], text.encode())
        except InvalidSignature:
            fail("signature does not verify")
        return text
    fail("no signature by the expected key")


def parse_checkpoint(text, name):
    lines = text[:-1].split("\n")
    if len(lines) < 3 or lines[0] != name:
        fail("checkpoint origin is not the key name")
    if not lines[1].isdigit() or (len(lines[1]) > 1 and lines[1][0] == "0"):
        fail("tree size is not a decimal number")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        fail("root hash is not 32 bytes")
    return int(lines[1]), root


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(leaf, index, size, proof, root):
    # RFC 9162 §2.1.3.2
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_hash, second_hash, proof):
    # RFC 9162 §2.1.4.2
    if first == second:
        return not proof and first_hash == second_hash
    if first == 0 or first > second:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path = [first_hash] + path
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_hash and sr == second_hash


def main():
    case = json.load(open(sys.argv[1]))
    name, key_id, pub = parse_vkey(case["vkey"])
    size, root = parse_checkpoint(open_note(case["note"], name, key_id, pub), name)
    h = bytes.fromhex
    for i in case.get("inclusion", []):
        if i["size"] == size and h(i["root"]) != root:
            fail("inclusion root differs from the signed checkpoint")
        record = h(i["record"])
        if len(record) < 64 or int.from_bytes(record[-40:-32], "little") != i["index"] + 1:
            fail(f"record does not carry CommitId {i['index'] + 1}")
        leaf = hashlib.sha256(b"\x00" + hashlib.sha256(record).digest()).digest()
        if not verify_inclusion(leaf, i["index"], i["size"], [h(p) for p in i["proof"]], h(i["root"])):
            fail(f"inclusion proof of leaf {i['index']} in {i['size']}")
    for c in case.get("consistency", []):
        if c["new"] == size and h(c["new_root"]) != root:
            fail("consistency root differs from the signed checkpoint")
        if not verify_consistency(c["old"], c["new"], h(c["old_root"]), h(c["new_root"]), [h(p) for p in c["proof"]]):
            fail(f"consistency proof {c['old']} -> {c['new']}")
    print(f"ACCEPT: checkpoint of size {size}, {len(case.get('inclusion', []))} inclusion and "
          f"{len(case.get('consistency', []))} consistency proofs")


if __name__ == "__main__":
    main()
