#!/usr/bin/env python3
"""serve_vocab.py - memsleep-serve with a model whose vocabulary is larger
than its tokenizer (memsleep-mkmodel --vocab 1000: 1000 embedding and output
rows, the 512-id tokenizer), as real checkpoints are (Qwen2: 151936 rows).

Proves what a client sees: /get_server_info reports the config's 1000;
input_ids up to 999 are accepted and 1000 is a 400; a sampled request that
produces ids the tokenizer does not have (>= 512) answers 200 with them in
output_ids and leaves them out of text (decoded to nothing), the text being
exactly the decoding of the other ids; streamed, the events add up to the
same text; the server stays up and stops cleanly.

  serve_vocab.py --serve PATH --mkmodel PATH --workdir DIR
"""
import argparse
import json
import os
import shutil
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from server import ServerProcess, make_model, open_stream, read_stream  # noqa: E402

VOCAB = 1000
TOKENIZER_IDS = 512


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def token_bytes(tokenizer_json):
    """id -> bytes of every token of a byte-level tokenizer.json."""
    with open(tokenizer_json, encoding="utf-8") as f:
        t = json.load(f)
    back = {c: b for b, c in bytes_to_unicode().items()}
    out = {i: bytes(back[c] for c in s) for s, i in t["model"]["vocab"].items()}
    for a in t.get("added_tokens", []):
        out[a["id"]] = a["content"].encode()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", required=True)
    p.add_argument("--mkmodel", required=True)
    p.add_argument("--workdir", required=True)
    a = p.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    model = make_model(a.mkmodel, os.path.join(a.workdir, "model"), "--vocab", str(VOCAB),
                       "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                       "--intermediate", "128")
    tok = token_bytes(os.path.join(model, "tokenizer.json"))
    assert len(tok) == TOKENIZER_IDS, len(tok)

    s = ServerProcess(a.serve, model)
    failures = []

    def check(ok, what):
        print(("PASS: " if ok else "FAIL: ") + what)
        if not ok:
            failures.append(what)

    try:
        info = s.info()
        check(info["model"]["vocab_size"] == VOCAB,
              "get_server_info: vocab_size %r" % info["model"]["vocab_size"])
        status, j = s.json("POST", "/generate", {"input_ids": [1, VOCAB],
                                                 "sampling_params": {"max_new_tokens": 2}})
        check(status == 400 and "out of range" in j.get("error", ""),
              "input id %d refused: %d %s" % (VOCAB, status, j))

        body = {"input_ids": [3, 512, 999, 700, 42],
                "sampling_params": {"max_new_tokens": 48, "temperature": 1.0,
                                    "sampling_seed": 5, "ignore_eos": True}}
        status, j = s.json("POST", "/generate", body)
        check(status == 200, "sampled request past the tokenizer: %d" % status)
        ids = j.get("output_ids", [])
        check(len(ids) == 48 and all(0 <= t < VOCAB for t in ids),
              "48 ids in [0, %d): %s" % (VOCAB, ids))
        past = [t for t in ids if t >= TOKENIZER_IDS]
        check(len(past) > 0, "some ids the tokenizer lacks were sampled: %s" % past)
        want = b"".join(tok[t] for t in ids if t < TOKENIZER_IDS).decode("utf-8", "replace")
        check(j.get("text") == want,
              "text is the other ids' decoding: %r, want %r" % (j.get("text"), want))

        c, r = open_stream(s, "/generate", dict(body, stream=True))
        events, done = read_stream(c, r)
        streamed = "".join(e["text"] for e in events)
        check(done and sum((e["output_ids"] for e in events), []) == ids,
              "streamed: the same ids, then [DONE]")
        check(streamed == want, "streamed text adds up to the same: %r" % streamed)
        check(s.json("GET", "/health")[0] == 200, "still healthy")
    finally:
        rc = s.stop()
        if rc != 0:
            print(s.log_text(), file=sys.stderr)
    check(rc == 0, "clean SIGTERM shutdown (exit %r)" % rc)
    if failures:
        return 1
    shutil.rmtree(a.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
