"""A plain-PyTorch NAtS-L language model with the authors' checkpoint layout.

Our own implementation (no fla, no Triton) of the model that automl/NeuralAttentionSearchLinear
builds as `NeuralAttentionSearchLinearAttnGDNForCausalLM` (model_type
`neural_attention_search_linear_attn_gdn`): the config keys, parameter names and shapes are the
reference's, so `config.json` + `model.safetensors` written from this module load in the
reference code and in hyla's C++ loader unchanged. Semantics follow
shared/reference/models.md section 1 (NAtS-L layer) and section 0/3 (Gated DeltaNet layers).

Layers:
  * pure GDN layers (fla GatedDeltaNet): q/k/v projections -> causal depthwise conv (SiLU) ->
    gated delta rule (L2-normed q, k; q scaled by dk^-1/2) -> RMSNorm(o) * SiLU(g_proj x) -> o_proj.
  * NAtS-L layers: the same projections feed both a gated delta rule (GDN view, H heads) and a
    softmax attention (Ha = G*H heads, RMS-normed q/k, no positional encoding). Every 64-token
    chunk is routed per GDN head by argmax(nats_layer(mean of the chunk's layer input)):
    op 0 = softmax (the chunk's keys stay visible to later chunks' softmax queries), op 1 = GDN
    (the chunk's writes are committed to the delta-rule state). A softmax chunk still decays the
    state. The query's own chunk is always seen by both ops. Outputs are mixed by
    softmax(nats_out_weights_layer(q)) after per-branch RMSNorm, gated by SiLU(g_proj x).

Training (as the paper): hard one-hot routing in the forward pass, straight-through softmax
gradient (the reference's `hard_softmax`). The gradient of the chunk type equals the
reference kernels' `dnats`: for a softmax chunk, d loss / d (an additive logit bias on its keys,
as seen from later chunks); for a GDN chunk, d loss / d (a multiplier on its state commit).
Chunks of the other type get no routing gradient (compute_dnats_for_invalid_blocks_* = False).

The gated delta rule runs in the chunked WY/UT form (chunk 64 = the routing chunk), with the
per-(chunk, head) commit flag in the inter-chunk recurrence; always in fp32.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Config keys in the order and with the values the reference's save_pretrained writes
# (shared/golden/natsl/config.json), for the fields we do not vary.
_REFERENCE_DEFAULTS = {
    "allow_neg_eigval": False,
    "architectures": ["NeuralAttentionSearchLinearAttnGDNForCausalLM"],
    "attn": None,
    "attn_apply_pos_encoding": False,
    "attn_max_position_embeddings": None,
    "attn_mode": "chunk",
    "attn_qk_norm": True,
    "attn_rope_theta": 10000.0,
    "attn_with_short_conv": True,
    "bos_token_id": 1,
    "compute_dnats_for_invalid_blocks_attn": False,
    "compute_dnats_for_invalid_blocks_linear_att": False,
    "conv_bias": False,
    "conv_size": 4,
    "decay_for_non_gdn_blocks": True,
    "dtype": "float32",
    "eos_token_id": 2,
    "expand_v": 2,
    "fuse_cross_entropy": False,
    "fuse_norm": True,
    "fuse_swiglu": True,
    "gdn_layers": [0, 2],
    "head_dim": 64,
    "hidden_act": "swish",
    "hidden_ratio": 4,
    "hidden_size": 128,
    "incomplete_block_start_with_ht": True,
    "initializer_range": 0.02,
    "intermediate_size": 256,
    "max_position_embeddings": 2048,
    "model_type": "neural_attention_search_linear_attn_gdn",
    "n_ops": 2,
    "nats_block_agg_type": "mean",
    "nats_block_size": 64,
    "nats_sample_strategy": "argmax",
    "norm_eps": 1e-06,
    "num_attn_heads": 4,
    "num_heads": 2,
    "num_hidden_layers": 4,
    "num_nats_head": None,
    "num_v_heads": None,
    "ops_for_incomplete_chunks": "all",
    "outputs_are_wighted": True,
    "pad_token_id": None,
    "tie_word_embeddings": False,
    "transformers_version": "5.17.0",
    "use_cache": True,
    "use_gate": True,
    "use_l2warp": False,
    "use_short_conv": True,
    "vocab_size": 256,
}

# Semantics this module implements; anything else is refused rather than silently changed.
_REQUIRED = {
    "allow_neg_eigval": False,
    "attn_apply_pos_encoding": False,
    "attn_qk_norm": True,
    "attn_with_short_conv": True,
    "conv_bias": False,
    "decay_for_non_gdn_blocks": True,
    "hidden_act": "swish",
    "incomplete_block_start_with_ht": True,
    "n_ops": 2,
    "nats_block_agg_type": "mean",
    "nats_block_size": 64,
    "ops_for_incomplete_chunks": "all",
    "tie_word_embeddings": False,
    "use_gate": True,
    "use_short_conv": True,
}


def make_config(**overrides):
  cfg = dict(_REFERENCE_DEFAULTS)
  for k, v in overrides.items():
    if k not in cfg:
      raise KeyError(f"unknown config key {k}")
    cfg[k] = v
  return dict(sorted(cfg.items()))


class Dims:
  """Derived widths of a config dict (as the reference layer computes them)."""

  def __init__(self, cfg):
    for k, v in _REQUIRED.items():
      if cfg.get(k, v) != v:
        raise ValueError(f"config {k}={cfg.get(k)!r} is not supported (need {v!r})")
    if cfg.get("num_v_heads") not in (None, cfg["num_heads"]):
      raise ValueError("num_v_heads must be null or num_heads")
    if cfg.get("num_nats_head") not in (None, cfg["num_heads"]):
      raise ValueError("num_nats_head must be null or num_heads")
    self.d = cfg["hidden_size"]
    self.vocab = cfg["vocab_size"]
    self.layers = cfg["num_hidden_layers"]
    self.h = cfg["num_heads"]
    self.dk = cfg["head_dim"]
    self.dv = int(self.dk * cfg["expand_v"])
    self.key_dim = self.h * self.dk
    self.value_dim = self.h * self.dv
    self.ha = cfg["num_attn_heads"]
    if self.ha % self.h or self.key_dim % self.ha or self.value_dim % self.ha:
      raise ValueError("num_attn_heads must be a multiple of num_heads dividing key/value dims")
    self.group = self.ha // self.h
    self.dak = self.key_dim // self.ha
    self.dav = self.value_dim // self.ha
    self.conv = cfg["conv_size"]
    self.chunk = cfg["nats_block_size"]
    self.eps = cfg["norm_eps"]
    if cfg.get("intermediate_size") is not None:
      self.inter = cfg["intermediate_size"]
    else:
      ratio = cfg.get("hidden_ratio") or 4
      self.inter = 256 * ((int(self.d * ratio * 2 / 3) + 255) // 256)
    self.gdn_layers = set(cfg.get("gdn_layers") or [])


def rms_norm(x, weight, eps):
  xf = x.float()
  y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
  return y * weight.float()


def l2_norm(x, eps=1e-6):
  xf = x.float()
  return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):

  def __init__(self, dim, eps):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x):
    return rms_norm(x, self.weight, self.eps)


class ShortConv(nn.Module):
  """Causal depthwise conv1d (no bias) + SiLU; weight [channels, 1, kernel] (fla layout)."""

  def __init__(self, channels, kernel):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(channels, 1, kernel))
    self.kernel = kernel

  def forward(self, x):  # x [B, T, C]
    t = x.shape[1]
    y = F.conv1d(x.transpose(1, 2), self.weight.to(x.dtype), padding=self.kernel - 1,
                 groups=x.shape[-1])
    return F.silu(y[..., :t].transpose(1, 2))


def gated_delta_chunked(q, k, v, beta, g, commit=None, chunk=64):
  """Chunked (WY/UT) gated delta rule with per-(chunk, head) commit flags, in fp32.

  q, k: [B, T, H, K] (q already L2-normed and scaled, k L2-normed); v: [B, T, H, V];
  beta, g: [B, T, H] (g = log decay); commit: [B, N, H] multiplier of each chunk's state
  writes (1 = GDN chunk, 0 = decay only), None = all ones; N = ceil(T / chunk).
  Returns o: [B, T, H, V] fp32, o_t = S_t^T q_t with S_t read after token t's write, each
  chunk starting from the committed state of the chunks before it.
  """
  with torch.autocast(device_type=q.device.type, enabled=False):
    q, k, v, beta, g = (x.float() for x in (q, k, v, beta, g))
    b, t, h, kd = k.shape
    vd = v.shape[-1]
    n = (t + chunk - 1) // chunk
    pad = n * chunk - t
    if pad:
      q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
      beta, g = (F.pad(x, (0, 0, 0, pad)) for x in (beta, g))

    def split(x):  # [B, T, H, ...] -> [B, H, N, C, ...]
      x = x.reshape(b, n, chunk, h, *x.shape[3:])
      return x.permute(0, 3, 1, 2, *range(4, x.dim())).contiguous()

    q, k, v, beta, g = split(q), split(k), split(v), split(beta), split(g)
    gc = g.cumsum(-1)  # [B, H, N, C]
    idx = torch.arange(chunk, device=q.device)
    incl = idx[:, None] >= idx[None, :]
    strict = idx[:, None] > idx[None, :]
    diff = gc[..., :, None] - gc[..., None, :]
    gamma = torch.exp(diff.masked_fill(~incl, float("-inf")))  # [B, H, N, C, C]
    a = (beta[..., :, None] * (k @ k.transpose(-1, -2)) * gamma).masked_fill(~strict, 0.0)
    rhs = torch.cat([beta[..., None] * v, (beta * gc.exp())[..., None] * k], dim=-1)
    sol = torch.linalg.solve_triangular(a, rhs, upper=False, unitriangular=True)
    u_tilde, w = sol[..., :vd], sol[..., vd:]
    p = (q @ k.transpose(-1, -2)) * gamma
    o_intra = p @ u_tilde  # [B, H, N, C, V]
    q_eff = q * gc.exp()[..., None] - p @ w  # [B, H, N, C, K]
    g_last = gc[..., -1]  # [B, H, N]
    k_dec = k * torch.exp(g_last[..., None] - gc)[..., None]
    kd_u = k_dec.transpose(-1, -2) @ u_tilde  # [B, H, N, K, V]
    kd_w = k_dec.transpose(-1, -2) @ w  # [B, H, N, K, K]
    decay = g_last.exp()
    if commit is not None:
      commit = commit.float().permute(0, 2, 1)  # [B, H, N]
    state = q.new_zeros(b, h, kd, vd)
    starts = []
    for c in range(n):
      starts.append(state)
      write = kd_u[:, :, c] - kd_w[:, :, c] @ state
      if commit is not None:
        write = write * commit[:, :, c, None, None]
      state = decay[:, :, c, None, None] * state + write
    s = torch.stack(starts, dim=2)  # [B, H, N, K, V]
    o = o_intra + q_eff @ s
    o = o.permute(0, 2, 3, 1, 4).reshape(b, n * chunk, h, vd)
    return o[:, :t]


def chunk_sparse_attention(qa, ka, va, keep, keep_ste, group, chunk, scale):
  """Softmax attention over (own chunk, causal) + (earlier chunks routed to softmax).

  qa, ka: [B, T, Ha, dk]; va: [B, T, Ha, dv]; keep: bool [B, N, H] (chunk routed to softmax,
  per decision head; head a uses decision head a // group); keep_ste: [B, N, H] zero-valued
  straight-through carrier added to the logits of kept keys seen from later chunks, or None.
  Returns [B, T, Ha, dv] fp32.
  """
  b, t, ha, _ = qa.shape
  dev = qa.device
  pos = torch.arange(t, device=dev)
  ch = pos // chunk
  own = (ch[:, None] == ch[None, :]) & (pos[:, None] >= pos[None, :])  # [T, T]
  past = ch[None, :] < ch[:, None]  # key chunk earlier than query chunk
  keep_key = keep[:, ch, :].repeat_interleave(group, dim=-1).permute(0, 2, 1)  # [B, Ha, T]
  allowed = own[None, None] | (past[None, None] & keep_key[:, :, None, :])
  s = (qa.transpose(1, 2) @ ka.transpose(1, 2).transpose(-1, -2)).float() * scale
  if keep_ste is not None:
    bias = keep_ste[:, ch, :].repeat_interleave(group, dim=-1).permute(0, 2, 1)  # [B, Ha, T]
    s = s + bias[:, :, None, :].float() * past.float()
  s = s.masked_fill(~allowed, float("-inf"))
  p = torch.softmax(s, dim=-1)
  o = p.to(va.dtype) @ va.transpose(1, 2)
  return o.transpose(1, 2).float()


class GatedDeltaNetLayer(nn.Module):
  """fla GatedDeltaNet (use_gate, short conv, no GVA) with its parameter names."""

  def __init__(self, dm: Dims):
    super().__init__()
    self.dm = dm
    d = dm.d
    self.q_proj = nn.Linear(d, dm.key_dim, bias=False)
    self.k_proj = nn.Linear(d, dm.key_dim, bias=False)
    self.v_proj = nn.Linear(d, dm.value_dim, bias=False)
    self.g_proj = nn.Linear(d, dm.value_dim, bias=False)
    self.a_proj = nn.Linear(d, dm.h, bias=False)
    self.b_proj = nn.Linear(d, dm.h, bias=False)
    self.A_log = nn.Parameter(torch.zeros(dm.h))
    self.dt_bias = nn.Parameter(torch.zeros(dm.h))
    self.q_conv1d = ShortConv(dm.key_dim, dm.conv)
    self.k_conv1d = ShortConv(dm.key_dim, dm.conv)
    self.v_conv1d = ShortConv(dm.value_dim, dm.conv)
    self.o_norm = RMSNorm(dm.dv, dm.eps)
    self.o_proj = nn.Linear(dm.value_dim, d, bias=False)

  def gates(self, x):
    beta = torch.sigmoid(self.b_proj(x).float())
    g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
    return beta, g

  def forward(self, x):
    dm = self.dm
    b, t, _ = x.shape
    q = self.q_conv1d(self.q_proj(x))
    k = self.k_conv1d(self.k_proj(x))
    v = self.v_conv1d(self.v_proj(x))
    beta, g = self.gates(x)
    qg = l2_norm(q.view(b, t, dm.h, dm.dk)) * dm.dk**-0.5
    kg = l2_norm(k.view(b, t, dm.h, dm.dk))
    o = gated_delta_chunked(qg, kg, v.view(b, t, dm.h, dm.dv), beta, g, None, dm.chunk)
    z = self.g_proj(x).view(b, t, dm.h, dm.dv).float()
    y = self.o_norm(o) * F.silu(z)
    return self.o_proj(y.reshape(b, t, dm.value_dim).to(x.dtype)), None


class NatslLayer(GatedDeltaNetLayer):
  """NAtS-L layer (NeuralAttentionSearchLinearAttnGDN) with its parameter names."""

  def __init__(self, dm: Dims):
    super().__init__(dm)
    del self.o_norm
    self.q_norm = RMSNorm(dm.dak, dm.eps)
    self.k_norm = RMSNorm(dm.dak, dm.eps)
    self.nats_layer = nn.Linear(dm.d, 2 * dm.h, bias=False)
    self.nats_out_weights_layer = nn.Linear(dm.key_dim, 2 * dm.ha, bias=False)
    self.o_norm = nn.Module()
    self.o_norm.weight1 = nn.Parameter(torch.ones(dm.dav))
    self.o_norm.weight2 = nn.Parameter(torch.ones(dm.dav))

  def route(self, x):
    """Router logits [B, N, H, 2] from the chunk means of x (last chunk may be partial)."""
    dm = self.dm
    b, t, d = x.shape
    n = (t + dm.chunk - 1) // dm.chunk
    xf = x.float()
    if n * dm.chunk != t:
      xf = F.pad(xf, (0, 0, 0, n * dm.chunk - t))
    counts = torch.clamp(t - torch.arange(n, device=x.device) * dm.chunk, max=dm.chunk)
    mean = xf.view(b, n, dm.chunk, d).sum(2) / counts[None, :, None].float()
    logits = F.linear(mean, self.nats_layer.weight.float())
    return logits.view(b, n, dm.h, 2)

  def forward(self, x):
    dm = self.dm
    b, t, _ = x.shape
    logits = self.route(x)
    n = logits.shape[1]
    keep = logits[..., 0] >= logits[..., 1]  # op 0 (softmax) wins ties, as argmax does
    complete = (torch.arange(n, device=x.device) < n - 1)[None, :, None]
    keep_ste = commit = None
    if self.training:
      soft = torch.softmax(logits, dim=-1)
      ste = soft - soft.detach()  # value 0, straight-through gradient of hard_softmax
      keep_ste = ste[..., 0] * (keep & complete).float()
      gdn = (~keep).float() * complete.float()
      commit = gdn + ste[..., 1] * gdn
    else:
      commit = (~keep).float()
    q = self.q_conv1d(self.q_proj(x))
    k = self.k_conv1d(self.k_proj(x))
    v = self.v_conv1d(self.v_proj(x))
    o_w = torch.softmax(self.nats_out_weights_layer(q).float().view(b, t, dm.ha, 2), dim=-1)
    beta, g = self.gates(x)
    qg = l2_norm(q.view(b, t, dm.h, dm.dk)) * dm.dk**-0.5
    kg = l2_norm(k.view(b, t, dm.h, dm.dk))
    o_gdn = gated_delta_chunked(qg, kg, v.view(b, t, dm.h, dm.dv), beta, g, commit, dm.chunk)
    qa = self.q_norm(q.view(b, t, dm.ha, dm.dak)).to(v.dtype)
    ka = self.k_norm(k.view(b, t, dm.ha, dm.dak)).to(v.dtype)
    o_att = chunk_sparse_attention(qa, ka, v.view(b, t, dm.ha, dm.dav), keep, keep_ste,
                                   dm.group, dm.chunk, dm.dak**-0.5)
    z = self.g_proj(x).view(b, t, dm.ha, dm.dav).float()
    y = (rms_norm(o_gdn.reshape(b, t, dm.ha, dm.dav), self.o_norm.weight1, dm.eps) * o_w[..., :1] +
         rms_norm(o_att, self.o_norm.weight2, dm.eps) * o_w[..., 1:]) * F.silu(z)
    out = self.o_proj(y.reshape(b, t, dm.value_dim).to(x.dtype))
    return out, logits


class GatedMLP(nn.Module):

  def __init__(self, d, inter):
    super().__init__()
    self.gate_proj = nn.Linear(d, inter, bias=False)
    self.up_proj = nn.Linear(d, inter, bias=False)
    self.down_proj = nn.Linear(inter, d, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):

  def __init__(self, dm: Dims, idx, dropout):
    super().__init__()
    self.attn_norm = RMSNorm(dm.d, dm.eps)
    self.attn = GatedDeltaNetLayer(dm) if idx in dm.gdn_layers else NatslLayer(dm)
    self.mlp_norm = RMSNorm(dm.d, dm.eps)
    self.mlp = GatedMLP(dm.d, dm.inter)
    self.dropout = dropout

  def forward(self, x):
    h, router = self.attn(self.attn_norm(x).to(x.dtype))
    x = x + F.dropout(h.to(x.dtype), self.dropout, self.training)
    h = self.mlp(self.mlp_norm(x).to(x.dtype))
    x = x + F.dropout(h.to(x.dtype), self.dropout, self.training)
    return x, router


class Model(nn.Module):
  """Inner `model.` module: embeddings, layers, final norm."""

  def __init__(self, dm: Dims, dropout):
    super().__init__()
    self.embeddings = nn.Embedding(dm.vocab, dm.d)
    self.layers = nn.ModuleList(Block(dm, i, dropout) for i in range(dm.layers))
    self.norm = RMSNorm(dm.d, dm.eps)


class NatslForCausalLM(nn.Module):

  def __init__(self, cfg, dropout=0.0):
    super().__init__()
    self.cfg = cfg
    self.dm = Dims(cfg)
    self.model = Model(self.dm, dropout)
    self.lm_head = nn.Linear(self.dm.d, self.dm.vocab, bias=False)

  def init_weights(self, seed):
    """The reference's _init_weights: N(0, initializer_range) for linears, convs, embeddings;
    A_log = log U(0, 16); dt_bias = softplus^-1(logU(1e-3, 0.1)); norms 1. Output projections
    (o_proj, down_proj) are further scaled by 1/sqrt(2 * layers) (GPT-2 style)."""
    gen = torch.Generator().manual_seed(seed)
    std = self.cfg["initializer_range"]
    for name, p in self.named_parameters():
      with torch.no_grad():
        if name.endswith("A_log"):
          p.copy_(torch.empty(p.shape).uniform_(0, 16, generator=gen).clamp_min(1e-4).log())
        elif name.endswith("dt_bias"):
          dt = torch.exp(torch.rand(p.shape, generator=gen) * (math.log(0.1) - math.log(0.001)) +
                         math.log(0.001)).clamp(min=1e-4)
          p.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif "norm" in name and p.dim() == 1:
          p.fill_(1.0)
        else:
          s = std
          if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            s = std / math.sqrt(2 * self.dm.layers)
          p.copy_(torch.randn(p.shape, generator=gen) * s)

  def forward(self, ids, return_router=False):
    x = self.model.embeddings(ids)
    routers = []
    for layer in self.model.layers:
      x, r = layer(x)
      if r is not None:
        routers.append(r)
    x = self.model.norm(x)
    logits = self.lm_head(x.to(self.lm_head.weight.dtype) if not torch.is_autocast_enabled()
                          else x)
    if return_router:
      return logits, routers
    return logits

  def natsl_layer_indices(self):
    return [i for i in range(self.dm.layers) if i not in self.dm.gdn_layers]

  def checkpoint_tensors(self, dtype=torch.float32):
    return {k: v.detach().to(dtype).cpu().contiguous() for k, v in self.state_dict().items()}
