#!/usr/bin/env python3
"""Checks natsl_model.py against the authors' golden NAtS-L fixture and a token-level oracle.

1. Loads <fixture>/config.json + model.safetensors into NatslForCausalLM (every tensor name and
   shape must match, none left over), runs the full forward in fp32 (TF32 off) on
   golden.safetensors `input_ids`, and compares `logits` (max |diff|, tolerance from
   golden.json) and `routing` (exact) with the reference's outputs.
2. Compares gated_delta_chunked (chunked WY/UT form with commit flags) with a token-by-token
   float64 recurrence that commits or decays the state at chunk ends, on random inputs.
3. Checks the straight-through routing gradient is finite and non-zero in training mode.

Usage: python3 tools/train/verify_fixture.py [--fixture DIR] [--device cpu|cuda]
Exit status 0 only if every check passes.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import natsl_model  # noqa: E402
import safetensors_io  # noqa: E402


def load_checkpoint(model, tensors):
  own = model.state_dict()
  missing = sorted(set(own) - set(tensors))
  extra = sorted(set(tensors) - set(own))
  if missing or extra:
    raise SystemExit(f"checkpoint layout differs: missing {missing}, extra {extra}")
  for k, v in own.items():
    if tuple(v.shape) != tuple(tensors[k].shape):
      raise SystemExit(f"{k}: shape {tuple(tensors[k].shape)} in file, {tuple(v.shape)} in model")
  model.load_state_dict({k: v.float() for k, v in tensors.items()})


def naive_gdn(q, k, v, beta, g, commit, chunk):
  """Token-level recurrence (fp64): running state from the chunk's committed start."""
  b, t, h, kd = k.shape
  vd = v.shape[-1]
  out = torch.zeros(b, t, h, vd, dtype=torch.float64)
  committed = torch.zeros(b, h, kd, vd, dtype=torch.float64)
  run = committed.clone()
  gsum = torch.zeros(b, h, dtype=torch.float64)
  for i in range(t):
    a = torch.exp(g[:, i]).double()
    run = a[..., None, None] * run
    gsum = gsum + g[:, i].double()
    kt = k[:, i].double()
    u = beta[:, i].double()[..., None] * (v[:, i].double() - (run * kt[..., None]).sum(-2))
    run = run + kt[..., None] * u[..., None, :]
    out[:, i] = (run * q[:, i].double()[..., None]).sum(-2)
    if (i + 1) % chunk == 0:
      c = i // chunk
      m = commit[:, c].double()[..., None, None]
      committed = m * run + (1 - m) * torch.exp(gsum)[..., None, None] * committed
      run = committed.clone()
      gsum.zero_()
  return out


def main():
  ap = argparse.ArgumentParser()
  here = os.path.dirname(os.path.abspath(__file__))
  ap.add_argument("--fixture", default=os.path.join(here, "..", "..", "..", "shared", "golden",
                                                    "natsl"))
  ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  ap.add_argument("--out", default=None, help="write a JSON report here")
  args = ap.parse_args()
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  dev = torch.device(args.device)
  report = {"device": str(dev), "torch": torch.__version__}
  ok = True

  # 1. Fixture.
  with open(os.path.join(args.fixture, "config.json")) as f:
    cfg = json.load(f)
  with open(os.path.join(args.fixture, "golden.json")) as f:
    gj = json.load(f)
  model = natsl_model.NatslForCausalLM(cfg).to(dev)
  load_checkpoint(model, safetensors_io.load_file(os.path.join(args.fixture, "model.safetensors")))
  gold = safetensors_io.load_file(os.path.join(args.fixture, "golden.safetensors"))
  model.eval()
  with torch.no_grad():
    ids = gold["input_ids"].long().to(dev)[None]
    logits, routers = model(ids, return_router=True)
  diff = (logits[0].cpu() - gold["logits"]).abs().max().item()
  tol = gj.get("recommended_tolerance", 1e-4)
  routing = torch.stack([(r[0, :, :, 0] < r[0, :, :, 1]).int().cpu() for r in routers])
  want = gold["routing"]
  n_complete = ids.shape[1] // model.dm.chunk
  routing_ok = bool(torch.equal(routing[:, :n_complete], want[:, :n_complete]))
  rl = torch.stack([r[0].cpu() for r in routers])
  rl_diff = (rl - gold["router_logits"]).abs().max().item()
  report["fixture"] = {"logits_max_abs_diff": diff, "tolerance": tol,
                       "routing_matches": routing_ok, "router_logits_max_abs_diff": rl_diff}
  ok &= diff <= tol and routing_ok
  print(f"fixture: logits max|diff| {diff:.3e} (tol {tol:g}), routing "
        f"{'matches' if routing_ok else 'DIFFERS'}, router logits max|diff| {rl_diff:.3e}")

  # 2. Chunked vs token-level oracle.
  gen = torch.Generator().manual_seed(0)
  b, t, h, kd, vd, c = 2, 200, 3, 16, 24, 64
  q = natsl_model.l2_norm(torch.randn(b, t, h, kd, generator=gen)) * kd**-0.5
  k = natsl_model.l2_norm(torch.randn(b, t, h, kd, generator=gen))
  v = torch.randn(b, t, h, vd, generator=gen)
  beta = torch.rand(b, t, h, generator=gen)
  g = -torch.rand(b, t, h, generator=gen) * 0.3
  commit = (torch.rand(b, (t + c - 1) // c, h, generator=gen) > 0.5).float()
  want = naive_gdn(q, k, v, beta, g, commit, c)
  got = natsl_model.gated_delta_chunked(q.to(dev), k.to(dev), v.to(dev), beta.to(dev),
                                        g.to(dev), commit.to(dev), c).cpu().double()
  gdiff = (got - want).abs().max().item()
  report["gdn_chunked_vs_recurrent_max_abs_diff"] = gdiff
  ok &= gdiff < 1e-4
  print(f"chunked GDN vs token recurrence: max|diff| {gdiff:.3e}")

  # 3. Straight-through routing gradient.
  model.train()
  logits = model(ids)
  loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
  loss.backward()
  gnorm = [model.model.layers[i].attn.nats_layer.weight.grad.norm().item()
           for i in model.natsl_layer_indices()]
  report["router_grad_norms"] = gnorm
  grad_ok = all(x > 0 and x == x and x != float("inf") for x in gnorm)
  ok &= grad_ok
  print(f"router gradient norms {gnorm}")
  report["ok"] = bool(ok)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  print("OK" if ok else "FAILED")
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
