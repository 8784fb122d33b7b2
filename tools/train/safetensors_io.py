"""Minimal safetensors reader/writer for torch tensors (no `safetensors` package needed).

Format: 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
little-endian tensor bytes. Tensors are written in name order, contiguous, 8-byte aligned
header (padded with spaces), as the reference library does.
"""

import json
import struct

import torch

_TO_ST = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.uint8: "U8",
}
_FROM_ST = {v: k for k, v in _TO_ST.items()}


def _raw_bytes(t):
  t = t.detach().contiguous().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().tobytes()
  return t.numpy().tobytes()


def save_file(tensors, path, metadata=None):
  header = {}
  blobs = []
  offset = 0
  for name in sorted(tensors):
    t = tensors[name]
    data = _raw_bytes(t)
    header[name] = {"dtype": _TO_ST[t.dtype], "shape": list(t.shape),
                    "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  text = json.dumps(header, separators=(",", ":")).encode("utf-8")
  text += b" " * ((8 - len(text) % 8) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for b in blobs:
      f.write(b)


def load_file(path):
  with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      begin, end = info["data_offsets"]
      f.seek(base + begin)
      buf = bytearray(f.read(end - begin))
      dtype = _FROM_ST[info["dtype"]]
      if dtype == torch.bfloat16:
        t = torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16)
      else:
        t = torch.frombuffer(buf, dtype=dtype)
      out[name] = t.reshape(info["shape"]).clone()
  return out
