#!/usr/bin/env python3
"""Builds the byte corpus for the default model from Debian's `fortunes` package.

Reads every fortune file under /usr/share/games/fortunes (the English collection of the
`fortunes` package, BSD licence; see /usr/share/doc/fortunes/copyright), skipping the strfile
indexes (*.dat), the *.u8 links and `ascii-art` (pictures, not prose). Each file is a list of
fortunes separated by lines holding a single '%'. Overstrike sequences (X BACKSPACE) are
removed, line endings are normalised, and each fortune becomes one paragraph followed by a blank
line.

Split (deterministic, no randomness): fortunes are numbered in file order (files sorted by
name); fortune i goes to validation when i % 20 == 19, else to training. That is 5% of the
fortunes, interleaved over every file, so both sides cover the same topics.

Writes <out>/train.bin, <out>/val.bin (raw UTF-8 bytes), <out>/data.json (sizes, sha256,
file list, and the unigram byte entropy of the validation bytes under the training bytes'
unigram distribution and under its own) and <out>/words.txt (the 5000 most frequent lower-case
letter runs [a-z]+ of the training text, most frequent first, ties alphabetical: the word list
of the default model's "mostly real words" test, tests/default_model/words.txt).

Usage: python3 tools/train/prepare_data.py [--src /usr/share/games/fortunes] [--out .train]
No third-party packages: plain Python 3.
"""

import argparse
import collections
import hashlib
import json
import math
import os
import re
import sys

SKIP = {"ascii-art"}
OVERSTRIKE = re.compile(r".\x08")


def read_fortunes(path):
  with open(path, "rb") as f:
    raw = f.read()
  text = raw.decode("utf-8", errors="strict")
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  text = OVERSTRIKE.sub("", text).replace("\x08", "")
  entries = []
  current = []
  for line in text.split("\n"):
    if line.strip() == "%":
      entries.append("\n".join(current))
      current = []
    else:
      current.append(line.rstrip())
  entries.append("\n".join(current))
  out = []
  for e in entries:
    e = e.strip("\n")
    if e.strip():
      out.append(e)
  return out


def unigram_bits(counts, probs, total):
  bits = 0.0
  for b in range(256):
    if counts[b]:
      bits -= counts[b] * math.log2(probs[b])
  return bits / total


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--src", default="/usr/share/games/fortunes")
  ap.add_argument("--out", default=".train")
  args = ap.parse_args()

  names = sorted(n for n in os.listdir(args.src)
                 if not n.endswith(".dat") and not n.endswith(".u8") and n not in SKIP and
                 os.path.isfile(os.path.join(args.src, n)))
  if not names:
    sys.exit(f"no fortune files under {args.src} (apt-get install fortunes)")
  train_parts, val_parts = [], []
  index = 0
  per_file = {}
  for name in names:
    entries = read_fortunes(os.path.join(args.src, name))
    per_file[name] = len(entries)
    for e in entries:
      (val_parts if index % 20 == 19 else train_parts).append(e + "\n\n")
      index += 1
  train = "".join(train_parts).encode("utf-8")
  val = "".join(val_parts).encode("utf-8")

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "train.bin"), "wb") as f:
    f.write(train)
  with open(os.path.join(args.out, "val.bin"), "wb") as f:
    f.write(val)

  # Unigram baselines on the validation bytes: (a) the training bytes' unigram distribution
  # with add-one smoothing (an honest held-out baseline), (b) the validation set's own
  # empirical entropy (a lower bound for any unigram model).
  tc = [0] * 256
  for b in train:
    tc[b] += 1
  vc = [0] * 256
  for b in val:
    vc[b] += 1
  tp = [(c + 1) / (len(train) + 256) for c in tc]
  vp = [c / len(val) if c else 1.0 for c in vc]
  info = {
      "source": "Debian package `fortunes` (fortune-mod data), " + args.src,
      "licence": "BSD (Regents of the University of California), /usr/share/doc/fortunes/copyright",
      "files": per_file,
      "fortunes": index,
      "split_rule": "fortune i (file order, files sorted by name) -> validation iff i % 20 == 19",
      "train_bytes": len(train),
      "val_bytes": len(val),
      "train_sha256": hashlib.sha256(train).hexdigest(),
      "val_sha256": hashlib.sha256(val).hexdigest(),
      "val_unigram_bpb_train_dist": unigram_bits(vc, tp, len(val)),
      "val_unigram_bpb_self": unigram_bits(vc, vp, len(val)),
      "distinct_bytes_train": sum(1 for c in tc if c),
  }
  counts = collections.Counter(re.findall(r"[a-z]+", train.decode("utf-8").lower()))
  top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5000]
  with open(os.path.join(args.out, "words.txt"), "w") as f:
    f.write("".join(w + "\n" for w, _ in top))
  with open(os.path.join(args.out, "data.json"), "w") as f:
    json.dump(info, f, indent=1)
  print(json.dumps({k: v for k, v in info.items() if k != "files"}, indent=1))


if __name__ == "__main__":
  main()
