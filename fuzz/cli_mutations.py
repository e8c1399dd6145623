"""Command-line mutational fuzz: the libFuzzer targets beside this file exercise the parsers;
this exercises whole commands. Each run copies a fixture (a PEFT folder, a LyCORIS file, a base
checkpoint), mutates one thing (a safetensors header's shape, dtype, offsets or length field; a
truncation; a NaN/inf bit pattern in the stored dtype; a duplicated or odd key; an
adapter_config.json field), runs one command on it (merge, inspect, check, convert, diff) and
requires: an exit status of 0, 1, 2 or 3 (never a panic or a signal); on an error, exactly one
line on stderr; and no output, temporary file or folder left behind.

Run: python3 fuzz/cli_mutations.py target/debug/lorakit RUNS SEED   (KINDS=gguf,ggad,peft,lyco,base
for some kinds only; prints each violation, then
a JSON summary; exits 1 if any). Needs only Python's standard library. The mutated inputs also
include GGUF models and GGUF adapters (counts, key/value types, string lengths, tensor dims,
types and offsets, the version, a truncation)."""
import json, os, random, shutil, struct, subprocess, sys, tempfile
LK = sys.argv[1]; N = int(sys.argv[2]); SEED = int(sys.argv[3])
FX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
r = random.Random(SEED)
W = tempfile.mkdtemp(prefix="lorakit-fuzz-")

def st_read(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]
def st_write(p, h, data, lie=None):
    hb = json.dumps(h).encode(); hb += b" " * ((8 - len(hb) % 8) % 8)
    n = len(hb) if lie is None else lie
    open(p, "wb").write(struct.pack("<Q", n) + hb + data)

DT = ["F32", "F16", "BF16", "F64", "I8", "U8", "I32", "I64", "BOOL", "F8_E4M3", "F8_E5M2", "Q4", "", "f32"]
def mutate_st(p):
    h, data = st_read(p)
    keys = [k for k in h if k != "__metadata__"]
    k = r.choice(keys); t = h[k]; m = r.randrange(14); what = m
    if m == 0: t["shape"] = [d + r.choice([-1, 1]) for d in t["shape"]] or [1]
    elif m == 1 and t["shape"]:
        t["shape"][r.randrange(len(t["shape"]))] = r.choice([0, 2**31, 2**62, -1]); what = f"1:{k}:{t['shape']}"
    elif m == 2:
        t["dtype"] = r.choice(DT); what = f"2:{k}:{t['dtype']}"
    elif m == 3: t["data_offsets"] = [t["data_offsets"][0], t["data_offsets"][1] + r.choice([-2, 2, 4096, 2**40])]
    elif m == 4: t["data_offsets"] = [t["data_offsets"][1], t["data_offsets"][0]]
    elif m == 5: del h[k]
    elif m == 6: h["__metadata__"] = r.choice([{"a": 1}, [], "x", {"format": None}, {"lorakit.version": {"x": 1}}])
    elif m == 7: data = data[: r.randrange(max(1, len(data)))]
    elif m == 8: st_write(p, h, data, lie=r.choice([0, 7, 2**40, len(json.dumps(h)) + 3])); return what
    elif m == 9:
        o = t["data_offsets"]; L = o[1] - o[0]
        if L >= 4:
            pos = o[0] + r.randrange(0, L - 3) // 4 * 4
            nan = r.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff", b"\x00\x7e\x00\x7e", b"\x80\x7f\x80\x7f"])
            data = data[:pos] + nan + data[pos + 4:]
            what = f"9:{k}:{t['dtype']}:{nan.hex()}"
    elif m == 10: t["shape"] = t["shape"][::-1]
    elif m == 11: h[k + ".extra"] = dict(t)
    elif m == 12: t["shape"] = t["shape"] + [1]
    elif m == 13: h[r.choice(["", "../x", "a" * 300, "\u0000", "x.lora_A.weight"])] = dict(t)
    st_write(p, h, data); return what

# GGUF v3 (gguf-py's constants.py / gguf_reader.py layout): value type -> struct format.
GG_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

def gg_parse(b):
    """Offsets of the fields a mutation may touch: counts, key/value types and string lengths,
    and each tensor info's dims, type and offset."""
    f = {"counts": 8, "kv": [], "strs": [], "tensors": []}
    pos = 24
    n_t, n_kv = struct.unpack_from("<QQ", b, 8)
    def string(pos):
        f["strs"].append(pos); n = struct.unpack_from("<Q", b, pos)[0]; return pos + 8 + n
    def value(pos, t):
        if t == 8: return string(pos)
        if t == 9:
            it, n = struct.unpack_from("<IQ", b, pos); pos += 12
            for _ in range(n): pos = value(pos, it)
            return pos
        return pos + struct.calcsize("<" + GG_SCALAR[t])
    for _ in range(n_kv):
        pos = string(pos); f["kv"].append(pos); t = struct.unpack_from("<I", b, pos)[0]; pos = value(pos + 4, t)
    for _ in range(n_t):
        pos = string(pos); nd = struct.unpack_from("<I", b, pos)[0]
        f["tensors"].append((pos, nd)); pos += 4 + 8 * nd + 4 + 8
    return f

def mutate_gguf(p):
    b = bytearray(open(p, "rb").read()); f = gg_parse(bytes(b)); m = r.randrange(10); what = f"g{m}"
    if m == 0: struct.pack_into("<Q", b, f["counts"], r.choice([0, 1 << 40, struct.unpack_from("<Q", b, 8)[0] + 1]))
    elif m == 1: struct.pack_into("<Q", b, 16, r.choice([0, 1 << 40, struct.unpack_from("<Q", b, 16)[0] + 1]))
    elif m == 2 and f["kv"]: struct.pack_into("<I", b, r.choice(f["kv"]), r.choice([9, 8, 13, 0xFFFFFFFF, 4]))
    elif m == 3 and f["strs"]: struct.pack_into("<Q", b, r.choice(f["strs"]), r.choice([0, 1 << 62, 3, 100000]))
    elif m in (4, 5, 6, 7) and f["tensors"]:
        pos, nd = r.choice(f["tensors"])
        if m == 4: struct.pack_into("<I", b, pos, r.choice([0, 5, nd + 1, 0xFFFFFFFF]))
        elif m == 5 and nd: struct.pack_into("<Q", b, pos + 4 + 8 * r.randrange(nd), r.choice([0, 1, 31, 1 << 40, (1 << 64) - 1]))
        elif m == 6: struct.pack_into("<I", b, pos + 4 + 8 * nd, r.choice([4, 5, 31, 36, 39, 99, 0xFFFFFFFF, 2, 8, 12]))
        elif m == 7: struct.pack_into("<Q", b, pos + 8 + 8 * nd, r.choice([1, 32, 1 << 40, (1 << 64) - 32]))
    elif m == 8: b = b[: r.randrange(len(b))]
    elif m == 9: struct.pack_into("<I", b, 4, r.choice([1, 2, 4, 0xFFFFFFFF]))
    open(p, "wb").write(bytes(b)); return what

def mutate_cfg(p):
    c = json.load(open(p)); m = r.randrange(10)
    if m == 0: c["r"] = r.choice([0, -1, 10**9, "8", None, 2.5])
    elif m == 1: c["lora_alpha"] = r.choice([0, -8, "x", None, float("nan") if False else 1e308])
    elif m == 2: c["target_modules"] = r.choice([[], "", ".*", ["q_proj", 3], None, "^(?!x"])
    elif m == 3: c["rank_pattern"] = r.choice([{"q_proj": 0}, {"q_proj": 10**6}, {".*": 4}, [], {"(": 2}])
    elif m == 4: c["alpha_pattern"] = r.choice([{"q_proj": -1}, {"v_proj": "x"}, {"[": 1}])
    elif m == 5: c["peft_type"] = r.choice(["LOHA", "LOKR", "IA3", "OFT", "XLORA", "", None, "lora"])
    elif m == 6: c["use_dora"] = r.choice([True, "yes", 1])
    elif m == 7: c["layers_to_transform"] = r.choice([[99], [-1], "0", [0, 0]])
    elif m == 8: c["modules_to_save"] = r.choice([["lm_head"], ["nope"], "embed_tokens", [None]])
    elif m == 9: open(p, "w").write(r.choice(["", "{", "[]", "null", json.dumps(c)[:-3]])); return m
    json.dump(c, open(p, "w")); return m

def run(args, outs):
    p = subprocess.run([LK] + args, capture_output=True, text=True, timeout=120)
    bad = []
    if p.returncode not in (0, 1, 2, 3): bad.append(f"rc={p.returncode}")
    if "panicked" in p.stderr or "RUST_BACKTRACE" in p.stderr: bad.append("panic")
    if p.returncode >= 2:
        lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("warning")]
        if len(lines) != 1: bad.append(f"{len(lines)}-line error")
        for o in outs:
            if os.path.exists(o): bad.append(f"left {o}")
        left = [f for f in os.listdir(W) if f.startswith("out") or ".tmp" in f]
        if left: bad.append(f"left {left}")
    return p, bad

cases = [
  ("peft", f"{FX}/llama/adapters/qv_r8", "adapter_model.safetensors"),
  ("peft", f"{FX}/llama/adapters/dora", "adapter_model.safetensors"),
  ("lyco", f"{FX}/lycoris/loha.safetensors", None),
  ("lyco", f"{FX}/lycoris/lokr.safetensors", None),
  ("lyco", f"{FX}/lycoris_w0/" , None),
  ("base", f"{FX}/llama/base", "model.safetensors"),
  ("gguf", f"{FX}/gguf/llama_q4_0.gguf", None),
  ("gguf", f"{FX}/gguf/llama_q8_0.gguf", None),
  ("ggad", f"{FX}/gguf/llamacpp/hf_qv_r8.q8_0.gguf", None),
]
if os.environ.get("KINDS"):
    cases = [c for c in cases if c[0] in os.environ["KINDS"].split(",")]
stats = {"runs": 0, "bad": 0, "rc": {}}
for i in range(N):
    kind, src, inner = r.choice(cases)
    case = os.path.join(W, f"c{i}")
    if os.path.isdir(src):
        if kind == "lyco":
            fs = [f for f in os.listdir(src) if f.endswith(".safetensors") and f != "base.safetensors" and "merged" not in f]
            f = r.choice(fs); shutil.copy(os.path.join(src, f), case + ".safetensors"); tgt = case + ".safetensors"; lbase = os.path.join(src, "base.safetensors")
        else:
            shutil.copytree(src, case); tgt = case
    elif kind in ("gguf", "ggad"):
        shutil.copy(src, case + ".gguf"); tgt = case + ".gguf"
    else:
        shutil.copy(src, case + ".safetensors"); tgt = case + ".safetensors"; lbase = os.path.join(os.path.dirname(src), "base.safetensors")
    if kind in ("gguf", "ggad"):
        what = mutate_gguf(tgt)
    elif kind == "peft" and r.random() < 0.35:
        what = "cfg%d" % mutate_cfg(os.path.join(tgt, "adapter_config.json"))
    else:
        f = os.path.join(tgt, inner) if inner else tgt
        if kind == "base" and not os.path.exists(f):
            f = os.path.join(tgt, [x for x in os.listdir(tgt) if x.endswith(".safetensors")][0])
        what = "st%s" % mutate_st(f)
    out = os.path.join(W, "out" + str(i))
    cmds = []
    if kind == "peft":
        cmds = [["merge", "--base", f"{FX}/llama/base", "--adapter", tgt, "--out", out, "--quiet"],
                ["inspect", tgt], ["check", tgt], ["convert", tgt, "--to", "kohya", "--out", out + ".safetensors"]]
    elif kind == "lyco":
        cmds = [["merge", "--base", lbase, "--adapter", tgt, "--out", out + ".safetensors", "--quiet"], ["inspect", tgt], ["check", tgt]]
    elif kind == "gguf":
        cmds = [["merge", "--base", tgt, "--adapter", f"{FX}/llama/adapters/qv_r8", "--out", out + ".gguf", "--quiet"],
                ["inspect", tgt], ["diff", tgt, f"{FX}/gguf/llama_f32.gguf"]]
    elif kind == "ggad":
        cmds = [["merge", "--base", f"{FX}/gguf/llama_q8_0.gguf", "--adapter", tgt, "--out", out + ".gguf", "--quiet"],
                ["inspect", tgt], ["check", tgt]]
    else:
        cmds = [["merge", "--base", tgt, "--adapter", f"{FX}/llama/adapters/qv_r8", "--out", out, "--quiet"], ["inspect", tgt],
                ["diff", tgt, f"{FX}/llama/base"]]
    cmd = r.choice(cmds)
    outs = [a for a in cmd if a.startswith(out)]
    p, bad = run(cmd, outs)
    stats["runs"] += 1; stats["rc"][p.returncode] = stats["rc"].get(p.returncode, 0) + 1
    if os.environ.get("SHOW_OK") and p.returncode == 0:
        print("OK", i, kind, what, cmd[0])
    if bad:
        stats["bad"] += 1
        print("BAD", i, kind, what, cmd[0], bad, "|", p.stderr.strip()[:400].replace("\n", " // "))
    for o in outs + [out + ".gguf"]:
        if os.path.isdir(o): shutil.rmtree(o)
        elif os.path.exists(o): os.remove(o)
    if os.path.isdir(case): shutil.rmtree(case)
    for ext in (".safetensors", ".gguf"):
        if os.path.exists(case + ext): os.remove(case + ext)
print(json.dumps(stats))
shutil.rmtree(W)
sys.exit(1 if stats["bad"] else 0)
