#!/usr/bin/env python3
"""Seeds for the `quantized_checkpoint` fuzz target, built from the committed quantized fixtures
(one per method) instead of committed copies of them: each seed is the u16 length of
config.json, config.json, then model.safetensors — the split the target makes.

    python3 fuzz/quant_seeds.py   # writes fuzz/seeds/quantized_checkpoint/ (git-ignored)
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "fixtures", "quant")
OUT = os.path.join(HERE, "seeds", "quantized_checkpoint")
CASES = ["awq4", "comfy_fp8", "ct_pack", "fp8_block", "gptq3_act", "int8", "nf4_dq"]

os.makedirs(OUT, exist_ok=True)
for case in CASES:
    with open(os.path.join(ROOT, case, "config.json"), "rb") as f:
        cfg = f.read()
    with open(os.path.join(ROOT, case, "model.safetensors"), "rb") as f:
        model = f.read()
    with open(os.path.join(OUT, case), "wb") as f:
        f.write(struct.pack("<H", len(cfg)) + cfg + model)
