#!/usr/bin/env python3
"""Trains the embedded default model: a byte-level NAtS-L LM on the `fortunes` corpus.

Reads <data>/train.bin, <data>/val.bin, <data>/data.json (made by prepare_data.py), trains
natsl_model.NatslForCausalLM (bf16 autocast, AdamW, warmup + cosine on wall-clock time, residual
dropout; hard one-hot chunk routing with straight-through gradients) until the time budget is
spent, then exports into <out>:

  config.json           the reference's config keys (loads in hyla and in the authors' code)
  model.safetensors     fp32 weights, the reference's tensor names
  golden.safetensors    input_ids [T] int32 (a held-out validation passage), logits [T, 256]
                        fp32 (full forward, fp32, TF32 off), routing [L_natsl, N, H] int32
                        (0 = softmax, 1 = GDN, -1 = last incomplete chunk), router_logits
                        [L_natsl, N, H, 2], bpb_slice_ids [S] int32 (the held-out slice the
                        C++ bits-per-byte test scores)
  train_log.json        config, hyper-parameters, loss curve, validation figures, routing
                        fractions, sample text, device and timings
  loss_curve.png        training / validation loss (bits per byte) against tokens seen

Evaluation rule (bits per byte, used for every figure): the text is cut into consecutive
windows of --seq-len bytes (the last one shorter); each window is an independent sequence
without BOS, and bytes 1.. of each window are scored given the bytes before them in the window.

Model selection: validation loss is measured every --eval-every seconds on the even-numbered
validation windows; the weights with the best such loss are exported. The card reports the full
validation set and the odd-numbered windows (never used for selection) separately.
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import natsl_model  # noqa: E402
import safetensors_io  # noqa: E402

LN2 = math.log(2.0)


def windows(data, seq_len):
  return [data[i:i + seq_len] for i in range(0, len(data), seq_len) if len(data[i:i + seq_len]) > 1]


def score_windows(model, wins, dev, amp, batch=16):
  """Sum of -log2 p and count of scored bytes over independent windows."""
  total, count = 0.0, 0
  model.eval()
  with torch.no_grad():
    full = [w for w in wins if len(w) == len(wins[0])]
    rest = [w for w in wins if len(w) != len(wins[0])]
    groups = [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in rest]
    for grp in groups:
      ids = torch.stack([w.long() for w in grp]).to(dev)
      with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(ids)
      nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                            ids[:, 1:].reshape(-1), reduction="sum")
      total += nll.item() / LN2
      count += ids[:, 1:].numel()
  return total, count


def routing_stats(model, wins, dev):
  """Per NAtS-L layer and head: fraction of complete chunks routed to softmax (fp32)."""
  idx = model.natsl_layer_indices()
  kept = torch.zeros(len(idx), model.dm.h, dtype=torch.float64)
  n = 0
  model.eval()
  with torch.no_grad():
    for w in wins:
      if len(w) < model.dm.chunk:
        continue
      ids = w.long()[None].to(dev)
      _, routers = model(ids, return_router=True)
      complete = len(w) // model.dm.chunk
      for li, r in enumerate(routers):
        kept[li] += (r[0, :complete, :, 0] >= r[0, :complete, :, 1]).double().sum(0).cpu()
      n += complete
  frac = kept / max(n, 1)
  return {"layers": idx, "chunks_per_head": n, "softmax_fraction_per_head": frac.tolist(),
          "softmax_fraction_per_layer": frac.mean(1).tolist()}


def sample(model, dev, prompt, n, temperature, seed):
  gen = torch.Generator(device="cpu").manual_seed(seed)
  ids = list(prompt.encode("utf-8"))
  model.eval()
  with torch.no_grad():
    for _ in range(n):
      x = torch.tensor(ids[-1024:], device=dev)[None]
      logits = model(x)[0, -1].float().cpu()
      p = torch.softmax(logits / temperature, -1)
      ids.append(int(torch.multinomial(p, 1, generator=gen)))
  return bytes(ids).decode("utf-8", errors="replace")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--data", default=".train")
  ap.add_argument("--out", default="out")
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--layers", type=int, default=6)
  ap.add_argument("--heads", type=int, default=3)
  ap.add_argument("--head-dim", type=int, default=64)
  ap.add_argument("--attn-heads", type=int, default=6)
  ap.add_argument("--intermediate", type=int, default=768)
  ap.add_argument("--seq-len", type=int, default=1024)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=1.5e-3)
  ap.add_argument("--min-lr-ratio", type=float, default=0.1)
  ap.add_argument("--warmup", type=int, default=100)
  ap.add_argument("--wd", type=float, default=0.1)
  ap.add_argument("--dropout", type=float, default=0.15)
  ap.add_argument("--budget", type=float, default=450.0, help="training seconds")
  ap.add_argument("--max-steps", type=int, default=10**9)
  ap.add_argument("--eval-every", type=float, default=25.0)
  ap.add_argument("--seed", type=int, default=1234)
  ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  ap.add_argument("--no-amp", action="store_true")
  ap.add_argument("--golden-offset", type=int, default=2048)
  ap.add_argument("--golden-len", type=int, default=300)
  ap.add_argument("--slice-windows", type=int, default=4)
  ap.add_argument("--sample-tokens", type=int, default=400)
  ap.add_argument("--hard-limit", type=float, default=540.0,
                  help="seconds since start after which optional work is cut short")
  args = ap.parse_args()

  t_start = time.time()
  dev = torch.device(args.device)
  amp = not args.no_amp
  torch.manual_seed(args.seed)
  torch.backends.cuda.matmul.allow_tf32 = True  # training only; exports below turn it off
  torch.backends.cudnn.allow_tf32 = True
  os.makedirs(args.out, exist_ok=True)

  with open(os.path.join(args.data, "data.json")) as f:
    data_info = json.load(f)
  train = torch.frombuffer(bytearray(open(os.path.join(args.data, "train.bin"), "rb").read()),
                           dtype=torch.uint8)
  val = torch.frombuffer(bytearray(open(os.path.join(args.data, "val.bin"), "rb").read()),
                         dtype=torch.uint8)
  train_dev = train.to(dev)
  val_wins = windows(val, args.seq_len)
  sel_wins = val_wins[0::2]
  print(f"data: train {len(train)} bytes, val {len(val)} bytes ({len(val_wins)} windows)",
        flush=True)

  gdn_layers = [i for i in range(args.layers) if i % 2 == 0]
  cfg = natsl_model.make_config(hidden_size=args.hidden, num_hidden_layers=args.layers,
                                num_heads=args.heads, head_dim=args.head_dim,
                                num_attn_heads=args.attn_heads,
                                intermediate_size=args.intermediate, gdn_layers=gdn_layers,
                                vocab_size=256)
  model = natsl_model.NatslForCausalLM(cfg, dropout=args.dropout)
  model.init_weights(args.seed)
  model.to(dev)
  n_params = sum(p.numel() for p in model.parameters())
  print(f"model: {n_params} parameters, NAtS-L layers {model.natsl_layer_indices()}", flush=True)

  decay, no_decay = [], []
  for name, p in model.named_parameters():
    if p.dim() >= 2 and "embeddings" not in name:
      decay.append(p)
    else:
      no_decay.append(p)
  opt_kwargs = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
  if dev.type == "cuda":
    opt_kwargs["fused"] = True
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                           {"params": no_decay, "weight_decay": 0.0}], **opt_kwargs)
  gen = torch.Generator(device=dev).manual_seed(args.seed)
  offsets = torch.arange(args.seq_len + 1, device=dev)

  log = {"steps": [], "val": []}
  t_train = time.time()
  next_eval = args.eval_every
  try:
    train_loop_error = None
    step, tokens, ema, best = _train_loop(args, model, opt, gen, offsets, train, train_dev,
                                          sel_wins, dev, amp, log, t_train, next_eval)
  except Exception:  # keep what was trained so far; the log says why it stopped
    import traceback
    train_loop_error = traceback.format_exc()
    print(train_loop_error, flush=True)
    step, tokens, ema, best = _LOOP_STATE["step"], _LOOP_STATE["tokens"], None, _LOOP_STATE["best"]
  log["train_loop_error"] = train_loop_error
  train_seconds = time.time() - t_train
  if best[1] is None:
    best = (float("inf"), copy.deepcopy(model.state_dict()), step)
  model.load_state_dict(best[1])
  print(f"exporting step {best[2]} (val(sel) {best[0]:.4f} bpb)", flush=True)
  _export(args, cfg, model, n_params, data_info, val, val_wins, dev, log, step, tokens, best,
          train, train_seconds, t_start)


_LOOP_STATE = {"step": 0, "tokens": 0, "best": (float("inf"), None, -1)}


def _train_loop(args, model, opt, gen, offsets, train, train_dev, sel_wins, dev, amp, log,
                t_train, next_eval):
  best = (float("inf"), None, -1)
  tokens = 0
  step = 0
  ema = None
  while True:
    elapsed = time.time() - t_train
    if elapsed >= args.budget or step >= args.max_steps:
      break
    frac = min(elapsed / args.budget, 1.0)
    lr = args.lr * min(1.0, (step + 1) / args.warmup) * (
        args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
    for group in opt.param_groups:
      group["lr"] = lr
    starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch,), device=dev,
                           generator=gen)
    batch = train_dev[starts[:, None] + offsets].long()
    model.train()
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
      logits = model(batch[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, 256), batch[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    step += 1
    tokens += args.batch * args.seq_len
    if step % 10 == 0 or step == 1:
      lv = loss.item() / LN2
      ema = lv if ema is None else 0.9 * ema + 0.1 * lv
      now = time.time() - t_train
      log["steps"].append({"step": step, "tokens": tokens, "time": now, "lr": lr,
                           "train_bpb": lv, "grad_norm": float(gnorm)})
      if step in (1, 10, 20) or step % 200 == 0:
        print(f"step {step} t {now:.1f}s tokens {tokens} train {lv:.3f} bpb lr {lr:.2e} "
              f"{tokens / max(now, 1e-9):.0f} tok/s", flush=True)
    _LOOP_STATE.update(step=step, tokens=tokens, best=best)
    if time.time() - t_train >= next_eval:
      next_eval += args.eval_every
      tot, cnt = score_windows(model, sel_wins, dev, amp)
      vb = tot / cnt
      now = time.time() - t_train
      log["val"].append({"step": step, "tokens": tokens, "time": now, "val_bpb_sel": vb})
      print(f"eval step {step} t {now:.1f}s val(sel) {vb:.4f} bpb", flush=True)
      if vb < best[0]:
        best = (vb, copy.deepcopy(model.state_dict()), step)
        _LOOP_STATE.update(best=best)
  tot, cnt = score_windows(model, sel_wins, dev, amp)
  log["val"].append({"step": step, "tokens": tokens, "time": time.time() - t_train,
                     "val_bpb_sel": tot / cnt})
  print(f"final step {step} val(sel) {tot / cnt:.4f} bpb", flush=True)
  if tot / cnt < best[0]:
    best = (tot / cnt, copy.deepcopy(model.state_dict()), step)
  return step, tokens, ema, best


def _export(args, cfg, model, n_params, data_info, val, val_wins, dev, log, step, tokens, best,
            train, train_seconds, t_start):

  # ---- Export, all in fp32 with TF32 off. ----
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  model.eval()
  tensors = model.checkpoint_tensors(torch.float32)
  safetensors_io.save_file(tensors, os.path.join(args.out, "model.safetensors"),
                           {"format": "pt"})
  with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
    f.write("\n")

  # Reload what was written and evaluate that, so every figure is of the exported file.
  exported = natsl_model.NatslForCausalLM(cfg).to(dev)
  exported.load_state_dict({k: v.float() for k, v in safetensors_io.load_file(
      os.path.join(args.out, "model.safetensors")).items()})
  exported.eval()
  t_eval = time.time()
  tot, cnt = score_windows(exported, val_wins, dev, amp=False)
  val_bpb = tot / cnt
  tot_o, cnt_o = score_windows(exported, val_wins[1::2], dev, amp=False)
  slice_wins = val_wins[:args.slice_windows]
  tot_s, cnt_s = score_windows(exported, slice_wins, dev, amp=False)
  slice_ids = torch.cat(slice_wins).int()
  routing = routing_stats(exported, val_wins, dev)
  log["hard_limit_hit"] = time.time() - t_start > args.hard_limit
  print(f"val bpb {val_bpb:.4f} (odd windows {tot_o / cnt_o:.4f}; slice {tot_s / cnt_s:.4f}) "
        f"softmax fraction per layer {routing['softmax_fraction_per_layer']}", flush=True)

  g_ids = val[args.golden_offset:args.golden_offset + args.golden_len].long()
  with torch.no_grad():
    g_logits, g_routers = exported(g_ids[None].to(dev), return_router=True)
  n_chunks = g_routers[0].shape[1]
  complete = args.golden_len // exported.dm.chunk
  g_routing = torch.stack([(r[0, :, :, 0] < r[0, :, :, 1]).int().cpu() for r in g_routers])
  if complete < n_chunks:
    g_routing[:, complete:] = -1
  g_router_logits = torch.stack([r[0].float().cpu() for r in g_routers])
  gaps = (g_router_logits[:, :complete, :, 0] - g_router_logits[:, :complete, :, 1]).abs()
  golden = {"input_ids": g_ids.int(), "logits": g_logits[0].float().cpu(),
            "routing": g_routing, "router_logits": g_router_logits,
            "bpb_slice_ids": slice_ids}
  safetensors_io.save_file(golden, os.path.join(args.out, "golden.safetensors"))
  eval_seconds = time.time() - t_eval

  n_sample = args.sample_tokens if time.time() - t_start < args.hard_limit else 40
  text = sample(exported, dev, "The", n_sample, 0.8, 0)
  print("sample (T=0.8):\n" + text, flush=True)

  dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
  log.update({
      "config": cfg,
      "n_params": n_params,
      "hyper": vars(args),
      "data": {k: v for k, v in data_info.items() if k != "files"},
      "steps_done": step,
      "tokens_seen": tokens,
      "epochs": tokens / len(train),
      "exported_step": best[2],
      "train_seconds": train_seconds,
      "eval_seconds": eval_seconds,
      "total_seconds": time.time() - t_start,
      "device": dev_name,
      "torch": torch.__version__,
      "val_bpb": val_bpb,
      "val_bytes_scored": cnt,
      "val_bpb_odd_windows": tot_o / cnt_o,
      "val_bpb_sel_best": best[0],
      "slice": {"windows": len(slice_wins), "seq_len": args.seq_len, "bytes": len(slice_ids),
                "scored": cnt_s, "bpb": tot_s / cnt_s},
      "golden": {"offset_in_val": args.golden_offset, "length": args.golden_len,
                 "max_abs_logit": g_logits.abs().max().item(),
                 "min_router_gap": gaps.min().item() if gaps.numel() else None,
                 "routing": g_routing.tolist()},
      "routing": routing,
      "sample_T0.8_seed0": text,
  })
  with open(os.path.join(args.out, "train_log.json"), "w") as f:
    json.dump(log, f, indent=1)

  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = [s["tokens"] / 1e6 for s in log["steps"]]
    ys = [s["train_bpb"] for s in log["steps"]]
    ax.plot(xs, ys, lw=0.8, alpha=0.7, label="train (batch, with dropout)")
    ax.plot([v["tokens"] / 1e6 for v in log["val"]], [v["val_bpb_sel"] for v in log["val"]],
            "o-", ms=3, label="validation (even windows)")
    ax.axhline(data_info["val_unigram_bpb_train_dist"], color="gray", ls="--", lw=0.8,
               label=f"unigram byte model ({data_info['val_unigram_bpb_train_dist']:.2f})")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("bits per byte")
    ax.set_ylim(1.0, 6.0)
    ax.set_title(f"NAtS-L {n_params / 1e6:.1f}M on fortunes: val {val_bpb:.3f} bpb")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss_curve.png"))
  except Exception as e:  # matplotlib missing: the curve can be drawn from train_log.json
    print(f"no plot: {e}", flush=True)
  print(f"done in {time.time() - t_start:.1f}s", flush=True)


if __name__ == "__main__":
  main()
