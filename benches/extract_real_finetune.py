"""Extract on a real full fine-tune (issue #15): lorakit's default randomized extract against the
f64 optimum (Eckart–Young, numpy SVD of every ΔW) and against mergekit-extract-lora (full SVD).

The issue's case is a full fine-tune of all-MiniLM-L6-v2; the Hub is not reachable from the
project's machine, so this makes the nearest thing that can be made here: a BERT of
all-MiniLM-L6-v2's shapes (hidden 384, 6 layers, 12 heads, ffn 1536; a 4096-token byte vocabulary
instead of 30522), initialised from a seed, trained by masked-LM on local text (the source of
the installed transformers' model files), then *fully* fine-tuned (every parameter, AdamW) on
another objective. The deltas are those of real optimiser steps, not a synthetic spectrum.

    /work/venv/bin/python benches/extract_real_finetune.py LORAKIT_BIN [MERGEKIT_EXTRACT] [DIR]

LORAKIT_BIN: a release build (`cargo build --release`); MERGEKIT_EXTRACT: the
`mergekit-extract-lora` executable (optional; `pip install mergekit` into a venv of its own);
DIR (default /tmp/minilm_ft) keeps the pair, so a rerun only times. `PRE`/`FT` set the steps
(default 40 / 80: ~10 min on 2 loaded cores). Prints per module lorakit's error / the optimum
(worst first), the worst for both tools, and the wall time of each (best of `RUNS`, default 3).
"""

import json, os, random, subprocess, sys, time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

lorakit = sys.argv[1]
mergekit = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
work = Path(sys.argv[3] if len(sys.argv) > 3 else "/tmp/minilm_ft")
rank, runs = 16, int(os.environ.get("RUNS", 3))


def make_pair():
    import glob
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    random.seed(0)
    files = sorted(glob.glob(os.path.join(os.path.dirname(__import__("transformers").__file__),
                                          "models/*/modeling_*.py")))[:200]
    text = " ".join(open(f, errors="ignore").read() for f in files)
    V = 4096
    ids = [b % (V - 2) + 2 for b in text.encode()]
    cfg = BertConfig(vocab_size=V, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=128)
    m = BertForMaskedLM(cfg)

    def batch(shift, n=8, L=64):
        x = torch.tensor([ids[s:s + L] for s in (random.randrange(len(ids) - L) for _ in range(n))])
        y, mask = x.clone(), torch.rand(x.shape) < 0.15
        xin = x.clone()
        xin[mask] = 1
        y[~mask] = -100
        if shift:  # the fine-tuning objective: another target for each masked token
            y = torch.where(y >= 0, (y + shift) % (V - 2) + 2, y)
        return xin, y

    def train(steps, lr, shift):
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01)
        for s in range(steps):
            x, y = batch(shift)
            loss = m(input_ids=x, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if s % 20 == 0:
                print(f"step {s} loss {loss.item():.3f}", flush=True)

    rng = np.random.default_rng(0)  # BertModel carries a pooler that the MLM model lacks
    pooler = {"pooler.dense.weight": (rng.standard_normal((384, 384)) * 0.02).astype(np.float32),
              "pooler.dense.bias": np.zeros(384, np.float32)}

    def save(d):
        sd = {k[len("bert."):]: v.detach().numpy().copy() for k, v in m.state_dict().items()
              if k.startswith("bert.")}
        (work / d).mkdir(parents=True, exist_ok=True)
        save_file({**sd, **pooler}, work / d / "model.safetensors")
        c = cfg.to_dict()
        c["architectures"] = ["BertModel"]
        (work / d / "config.json").write_text(json.dumps(c))

    train(int(os.environ.get("PRE", 40)), 5e-4, 0)
    save("base")
    train(int(os.environ.get("FT", 80)), 1e-4, 7)
    save("tuned")


if not (work / "tuned" / "model.safetensors").exists():
    make_pair()
base, tuned = load_file(work / "base" / "model.safetensors"), load_file(work / "tuned" / "model.safetensors")


def timed(cmd, out):
    best = None
    for _ in range(runs):
        subprocess.run(["rm", "-rf", str(out)], check=True)
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        dt = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"{cmd[0]} failed: {p.stderr[-2000:]}")
        best = dt if best is None else min(best, dt)
    return best, p.stdout


def optimum(d, r):
    s = np.linalg.svd(d, compute_uv=False)
    total = (s ** 2).sum()
    return np.sqrt((s[r:] ** 2).sum() / total) if total > 0 else 0.0


lk_s, out = timed([lorakit, "extract", "--base", str(work / "base"), "--tuned", str(work / "tuned"),
                   "--rank", str(rank), "--out", str(work / "lk_out"), "--json"], work / "lk_out")
rows = []
for m in json.loads(out)["modules"]:
    k = m["tensor"]
    d = tuned[k].astype(np.float64) - base[k].astype(np.float64)
    opt = optimum(d, m["rank"])
    if d.ndim == 2 and opt > 0:
        rows.append((m["rel_error"] / opt, k, m["method"], m.get("power_iters"), m["rel_error"], opt))
rows.sort(reverse=True)
print(f"{'lorakit/opt':>11}  module (method, power iterations): error, optimum")
for x in rows:
    print(f"{x[0]:11.6f}  {x[1]} ({x[2]}, q={x[3]}): {x[4]:.5f}, {x[5]:.5f}")
print(f"lorakit: {len(rows)} modules, worst {rows[0][0]:.6f}x the optimum, {lk_s:.2f} s")
if mergekit:
    mk_s, _ = timed([mergekit, "--model", str(work / "tuned"), "--base-model", str(work / "base"),
                     "--out-path", str(work / "mk_out"), "--max-rank", str(rank)], work / "mk_out")
    a = load_file(work / "mk_out" / "adapter_model.safetensors")
    cfg = json.loads((work / "mk_out" / "adapter_config.json").read_text())
    worst = 0.0
    for k in a:
        if ".lora_A." not in k:
            continue
        mod = k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        B, A = a[k.replace("lora_A", "lora_B")].astype(np.float64), a[k].astype(np.float64)
        r = cfg.get("rank_pattern", {}).get(mod, cfg["r"])
        s = cfg.get("alpha_pattern", {}).get(mod, cfg["lora_alpha"]) / r
        d = tuned[mod + ".weight"].astype(np.float64) - base[mod + ".weight"].astype(np.float64)
        opt = optimum(d, A.shape[0])
        if opt > 0:
            worst = max(worst, np.linalg.norm(d - s * B @ A) / np.linalg.norm(d) / opt)
    print(f"mergekit-extract-lora: worst {worst:.6f}x the optimum, {mk_s:.2f} s; lorakit is {mk_s / lk_s:.1f}x faster")
