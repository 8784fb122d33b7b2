#!/usr/bin/env python3
"""Draws the training / validation curve of a train.py run from its train_log.json.

Usage: python3 tools/train/plot_curve.py train_log.json loss_curve.png
Needs matplotlib (Debian: python3-matplotlib).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
  src, dst = sys.argv[1], sys.argv[2]
  with open(src) as f:
    log = json.load(f)
  fig, ax = plt.subplots(figsize=(7.5, 4.4), dpi=110)
  ax.plot([s["tokens"] / 1e6 for s in log["steps"]], [s["train_bpb"] for s in log["steps"]],
          lw=0.8, alpha=0.7, label="training batch (dropout on)")
  ax.plot([v["tokens"] / 1e6 for v in log["val"]], [v["val_bpb_sel"] for v in log["val"]],
          "o-", ms=3, label="validation, even windows (selection)")
  best = next(v for v in log["val"] if v["step"] == log["exported_step"])
  ax.plot([best["tokens"] / 1e6], [best["val_bpb_sel"]], "k*", ms=11,
          label=f"exported: step {log['exported_step']}, full validation {log['val_bpb']:.3f} bpb")
  uni = log["data"]["val_unigram_bpb_train_dist"]
  ax.axhline(uni, color="gray", ls="--", lw=0.8, label=f"unigram byte model ({uni:.2f} bpb)")
  ax.set_xlabel("training bytes seen (millions)")
  ax.set_ylabel("bits per byte")
  ax.set_ylim(1.0, 6.0)
  ax.set_title(f"NAtS-L {log['n_params'] / 1e6:.1f}M, byte-level, Debian fortunes "
               f"({log['device']}, {log['train_seconds']:.0f} s)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(dst)


if __name__ == "__main__":
  main()
