"""Round-6 cases of fuzz/hostile_round.py: the classes rounds 1-5 did not try.

Rounds 1-5 covered (by case function): extract inputs and outputs, PEFT config lies (r differs,
huge, string; alpha NaN/inf/negative; patterns matching nothing; not an object; a duplicate key;
an unknown peft_type), PEFT tensor lies on q_proj (overlap, hole, dtype size, 0-d, 0-sized, rank,
NaN/inf in F32/F16/BF16, a missing B, bad UTF-8, 3-d), eval/train tokens and models, train resumes,
recipes and --part/finalize, option values, quantized bases (one lie per layout), LyCORIS files
(the *first* module of each fixture only: a factor dropped, grown along dim 0, or an F32 NaN),
PEFT AdaLoRA/IA3/OFT/LoHa/LoKr folders, GGUF bases/adapters/splits/parts/recipes, outputs onto
inputs (merge, extract, resize, combine, convert, eval, inspect, dequantize, check --fix, train),
existing outputs, read-only and full disks, signals, direct I/O, FP8 blocks, duplicated names,
Flux/Wan layouts and quantized configs.

What they missed, tried here:
  * lyco_factor_lies: every module kind of every LyCORIS fixture (linear, conv, norm), factors
    grown along dims other than 0, stored with the shape reversed or flattened, stored as
    F16/BF16/F64 with a NaN or inf, IA3's on_input flag flipped (the vector on the wrong axis);
  * lyco_alpha_lies / kohya_lies: .alpha of shape [1]/[r], I64/F64/BF16/F16, 0, negative,
    NaN/inf, huge; kohya lora_up without lora_down and the reverse, one module twice in the
    kohya and the old diffusers (`.lora.down.weight`) conventions;
  * peft_config_types: adapter_config.json fields of the wrong JSON type or range;
  * peft_rank_and_dora: adapter tensors of a rank the config does not state (both factors),
    DoRA magnitudes of the wrong length, NaN/inf, in F16/BF16;
  * st_header_lies: safetensors headers (metadata of non-string values, offsets reversed or
    gapped or past the end, unknown dtypes, negative/float/overflowing shapes, header lengths
    that lie, trailing bytes, non-JSON);
  * sharded_lies: index files that are malformed, shards that are symlinks (leaving the folder
    is what the Hugging Face cache does: valid), a shard that is a folder;
  * out_alias_matrix: every writing command's --out onto its input as `./x`, `x/.`, `x//`,
    a symlink, a hard link, and a symlinked parent;
  * nonfinite_dtypes: NaN/inf in the base (F32/F16/BF16) and adapter (F64, F8) and in the
    quantized scales not yet tried (AWQ, compressed-tensors, comfy FP8, NF4 quant_map, nested
    absmax).

Results, 2026-12-06, debug build, as root. Against the pre-fix binary (main at 21e6ec0), after
correcting this file's own verdicts (below), 15 of round 6's cases violated the contract; after
the fixes 0. The whole round (`python3 fuzz/hostile_round.py target/debug/lorakit`, all six
rounds): 4,339 cases in 395 s, 0 violations, 0 skipped, 0 known. Tests in tests/it/hostile6.rs.
  fixed (15 cases):
  *  1  an index whose weight_map is {}: inspect panicked (Checkpoint::metadata of no shard)
        (io/checkpoint.rs: "`weight_map` names no tensor")
  *  6  lora_alpha / an alpha_pattern value of 1e300 (finite JSON, beyond f32): merge blamed the
        base tensor ("merged value … is not finite"), convert blamed its output file, resize
        exited 0 and wrote an adapter
        (peft/config.rs: refused naming the key)
  *  3  "peft_type": 7 read as LORA (peft/config.rs: a non-string peft_type is refused; PEFT
        looks it up by name)
  *  4  LyCORIS dora_scale / rescale stored flat ([n] for [n, 1, …]) read as per-output (on a
        square weight ComfyUI broadcasts it along the input side; LyCORIS refuses the shape),
        and a per-input dora_scale of 9 channels on a LoHa conv whose base has 8 (9 divides the
        flattened 72) merged (lycoris/read.rs; ops/merge/tensor.rs checks it against the base)
  *  1  fan_in_fan_out true on a llama (nn.Linear) base: PEFT resets it to false and merges
        W + s·B·A; lorakit merged (B·A)ᵀ, 0.187 off PEFT's merge_and_unload on the square
        q_proj (measured with peft 0.21.2), v_proj refused (ops/merge/plan.rs)
  accepted as valid (not counted), after reading the producer: a header with a leading space,
  an unknown tensor field, F8_E8M0/F4/C64 dtypes (safetensors 0.8 reads them); offsets past the
  end reported on the next tensor out of line (safetensors 0.8 names the same); a config without
  peft_type (lorakit reads LORA with PEFT's defaults; PEFT's PeftModel.from_pretrained would
  refuse it: a KeyError) and an unknown key; a refusal of peft_type LOHA on LoRA tensors or of
  use_dora without magnitudes that names the tensor file; IA3's on_input flipped on a square
  weight (a valid adapter of the other side); an inf in a nested_quant_map entry no absmax
  byte uses (all entries inf is refused); symlinked shards leaving the folder (the Hugging Face
  cache's layout) merge.
"""
import json, math, os, shutil, struct, subprocess

from hostile_lib import (BASE, FX, LK, QA, QB, QV, STATS, TUNED, WQ, Case, case, f32, run, snapshot, st_build, st_read,
                         st_tensors, st_write, violation)

NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------- encodings
def floats(dt, raw):
    """The F32 bytes `raw` as a list of floats."""
    return list(struct.unpack("<%df" % (len(raw) // 4), raw))


def encode(dt, vals):
    if dt == "F32":
        return struct.pack("<%df" % len(vals), *vals)
    if dt == "F64":
        return struct.pack("<%dd" % len(vals), *vals)
    if dt == "F16":
        out = b""
        for v in vals:
            out += struct.pack("<e", v) if math.isfinite(v) or math.isnan(v) else (b"\x00\x7c" if v > 0 else b"\x00\xfc")
        return out
    if dt == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in vals)
    raise ValueError(dt)


def with_bad(dt, raw, bad):
    """F32 `raw` re-encoded as `dt`, its first value replaced by `bad` (NaN or inf)."""
    v = floats("F32", raw)
    v[0] = bad
    return encode(dt, v)


def either_naming(c, argv, mention=(), refusals=(2,)):
    """Refused cleanly naming `mention`, or done without changing any file that was there."""
    before = snapshot(c.dir)
    p = subprocess.run([LK] + argv, cwd=c.dir, capture_output=True, text=True, timeout=120, errors="replace")
    STATS["cases"] += 1
    after = snapshot(c.dir)
    if p.returncode == 0:
        changed = [k for k, v in before.items() if after.get(k) != v and not v.startswith("dir:")]
        if changed:
            violation(c.name, "a file that existed before was changed or removed", str(changed)[:400])
        return p
    lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("warning")]
    if p.returncode not in refusals or "panicked" in p.stderr or (p.returncode >= 2 and len(lines) != 1):
        violation(c.name, f"rc={p.returncode}, {len(lines)} lines", p.stderr[:400])
    elif p.returncode >= 2:
        missing = [m for m in mention if not any(x in lines[0] for x in ((m,) if isinstance(m, str) else m))]
        if missing:
            violation(c.name, f"message does not name {missing}", lines[0])
    if after != before:
        violation(c.name, "the case folder changed on a refusal", str(sorted(set(after.items()) ^ set(before.items())))[:300])
    return p


def same_output(c, argv_a, argv_b, out_a, out_b):
    """Two runs that must both succeed and write byte-identical outputs (a field the format
    defines as ignored must be ignored)."""
    STATS["cases"] += 1
    pa = subprocess.run([LK] + argv_a, cwd=c.dir, capture_output=True, text=True, errors="replace")
    pb = subprocess.run([LK] + argv_b, cwd=c.dir, capture_output=True, text=True, errors="replace")
    if pa.returncode or pb.returncode:
        violation(c.name, f"rc={pa.returncode}/{pb.returncode} (want 0/0)", (pa.stderr + pb.stderr)[:400])
        return
    ta, _ = st_tensors(c.p(out_a))
    tb, _ = st_tensors(c.p(out_b))
    if ta != tb:
        diff = [k for k in ta if ta.get(k) != tb.get(k)]
        violation(c.name, "outputs differ", str(diff)[:300])


# ---------------------------------------------------------------- LyCORIS factors that lie per algorithm
LYCO6 = ["lycoris/" + n for n in ("dora_out", "full", "locon_tucker", "loha", "loha_dora_in", "loha_tucker", "lokr",
                                  "lokr_both_tucker", "lokr_full")] + \
        ["lycoris_w0/" + n for n in ("boft", "boft_rescale", "glora", "ia3", "ia3_input", "lokr_norm", "oft",
                                     "oft_rescale")]
OPTIONAL = ("alpha", "on_input", "diff_b", "rescale", "dora_scale", "b_norm")


def lyco_merge(c):
    return ["merge", "--base", "base.safetensors", "--adapter", "ad.safetensors", "--out", "o.safetensors"]


def modules_of(t):
    mods = {}
    for k in t:
        mods.setdefault(k.split(".", 1)[0], []).append(k)
    return mods


def short(mod):
    return mod.rsplit("_", 2)[-2] + "_" + mod.rsplit("_", 1)[-1] if mod.count("_") >= 2 else mod


@case
def lyco_factor_lies():
    for fx in LYCO6:
        algo = fx.split("/")[1]
        src = os.path.join(FX, fx + ".safetensors")
        t0, meta = st_tensors(src)
        mods = modules_of(t0)
        first = sorted(t0)[0].split(".", 1)[0]
        # One module per kind: the first conv (4-d factors), linear and norm module.
        picked, kinds = [], set()
        for m in sorted(mods):
            kind = ("norm" if any(k.endswith(("w_norm", "b_norm")) for k in mods[m]) else
                    "conv" if any(len(t0[k][1]) == 4 for k in mods[m]) else "linear")
            if kind not in kinds:
                kinds.add(kind)
                picked.append(m)
        for m in picked:
            tag = m.split("_")[-1] if not m.endswith(("_in", "_out")) else "_".join(m.split("_")[-2:])
            for k in sorted(mods[m]):
                suffix = k[len(m) + 1:]
                dt, sh, raw = t0[k]
                lies = {}
                for d in range(len(sh)):
                    if d == 0 and m == first:
                        continue  # round 1 grew dim 0 of the first module
                    grown = list(sh)
                    grown[d] += 1
                    n = 1
                    for x in grown:
                        n *= x
                    lies[f"grow{d}"] = (grown, "F32", (raw + b"\0" * (4 * n))[:4 * n])
                if len(sh) >= 2 and sh[::-1] != sh:
                    lies["reversed"] = (sh[::-1], dt, raw)
                if len(sh) >= 2 and suffix not in ("alpha", "on_input"):
                    lies["flat"] = ([len(raw) // 4], dt, raw)
                if dt == "F32" and raw and suffix != "on_input":
                    lies["f16_inf"] = (sh, "F16", with_bad("F16", raw, INF))
                    lies["bf16_nan"] = (sh, "BF16", with_bad("BF16", raw, NAN))
                    lies["f64_nan"] = (sh, "F64", with_bad("F64", raw, NAN))
                    if m != first:
                        lies["f32_neginf"] = (sh, "F32", with_bad("F32", raw, -INF))
                square = any(len(t0[x][1]) == 2 and t0[x][1][0] == t0[x][1][1] for x in mods[m]) or \
                    "to_q" in m
                if suffix == "on_input" and not square:
                    # (On a square weight the flipped vector fits the other side: another valid file.)
                    flipped = 0.0 if floats("F32", raw)[0] else 1.0
                    lies["flipped"] = (sh, dt, f32([flipped]))
                for what, (nsh, ndt, nraw) in lies.items():
                    c = Case(f"r6_lyco_{algo}_{tag}_{suffix}_{what}")
                    c.copy(os.path.dirname(fx) + "/base.safetensors", "base.safetensors")
                    t = dict(t0)
                    t[k] = (ndt, nsh, nraw)
                    st_build(c.p("ad.safetensors"), t, meta)
                    run(c, lyco_merge(c), mention=["ad.safetensors", tag])
                    if what == "reversed" and "norm" not in kinds:  # PEFT has no norm tuner
                        c2 = Case(f"r6_lyco_{algo}_{tag}_{suffix}_{what}_convert")
                        shutil.copy(c.p("ad.safetensors"), c2.p("ad.safetensors"))
                        shutil.copy(c.p("base.safetensors"), c2.p("base.safetensors"))
                        run(c2, ["convert", "ad.safetensors", "--to", "peft", "--base", "base.safetensors", "--out", "o"],
                            mention=["ad.safetensors", tag])


# ---------------------------------------------------------------- .alpha lies (LyCORIS and kohya)
def alpha_lies(a, r):
    """name -> (dtype, shape, bytes, verdict): "refuse" (a clean refusal naming the file and the
    module) or "either" (a value kohya/LyCORIS read alike: float(alpha) of a 1-element tensor)."""
    return {
        "shape_1": ("F32", [1], f32([a]), "either"),
        "shape_r": ("F32", [r], f32([a] * r), "refuse"),
        "shape_2x1": ("F32", [2, 1], f32([a, a]), "refuse"),
        "i64": ("I64", [], struct.pack("<q", int(a)), "either"),
        "f64": ("F64", [], struct.pack("<d", a), "either"),
        "bf16": ("BF16", [], encode("BF16", [a]), "either"),
        "f16": ("F16", [], encode("F16", [a]), "either"),
        "zero": ("F32", [], f32([0.0]), "either"),
        "negative": ("F32", [], f32([-a]), "either"),
        "nan": ("F32", [], f32([NAN]), "refuse"),
        "inf": ("F32", [], f32([INF]), "refuse"),
        "f16_nan": ("F16", [], encode("F16", [NAN]), "refuse"),
        "bf16_inf": ("BF16", [], encode("BF16", [INF]), "refuse"),
        "huge": ("F32", [], f32([3e38]), "either"),
        "bool": ("BOOL", [], b"\x01", "either"),
        "u8_bytes_of_f32": ("U8", [4], f32([a]), "refuse"),
    }


@case
def lyco_alpha_lies():
    for fx in ("lycoris/loha", "lycoris/lokr", "lycoris/dora_out", "lycoris/locon_tucker", "lycoris_w0/glora",
               "lycoris_w0/oft", "lycoris_w0/boft"):
        algo = fx.split("/")[1]
        t0, meta = st_tensors(os.path.join(FX, fx + ".safetensors"))
        mods = modules_of(t0)
        m = next(m for m in sorted(mods) if m + ".alpha" in t0)
        a = floats("F32", t0[m + ".alpha"][2])[0]
        for what, (dt, sh, raw, verdict) in alpha_lies(a, 3).items():
            c = Case(f"r6_lyalpha_{algo}_{what}")
            c.copy(os.path.dirname(fx) + "/base.safetensors", "base.safetensors")
            t = dict(t0)
            t[m + ".alpha"] = (dt, sh, raw)
            st_build(c.p("ad.safetensors"), t, meta)
            mention = ["ad.safetensors", ("alpha", m, m.split("_")[-1])]
            if verdict == "refuse":
                run(c, lyco_merge(c), mention=mention)
            else:
                either_naming(c, lyco_merge(c), mention=mention)


KOHYA = "kohya/te_lora.safetensors"
KMERGE = ["merge", "--base", "te_base", "--adapter", "k.safetensors", "--out", "o"]


@case
def kohya_lies():
    t0, meta = st_tensors(os.path.join(FX, KOHYA))
    mod = sorted(k for k in t0 if k.endswith(".lora_down.weight"))[0][: -len(".lora_down.weight")]
    r = t0[mod + ".lora_down.weight"][1][0]
    a = floats("F32", t0[mod + ".alpha"][2])[0]

    def kcase(name, t):
        c = Case("r6_kohya_" + name, ("kohya/te_base", "te_base"))
        st_build(c.p("k.safetensors"), t, meta)
        return c
    for what, (dt, sh, raw, verdict) in alpha_lies(a, r).items():
        t = dict(t0)
        t[mod + ".alpha"] = (dt, sh, raw)
        c = kcase("alpha_" + what, t)
        mention = ["k.safetensors", ("alpha", mod, "fc1")]
        for argv in (KMERGE, ["convert", "k.safetensors", "--to", "peft", "--out", "p"]):
            if verdict == "refuse":
                run(c, argv, mention=mention)
            else:
                before = set(snapshot(c.dir))
                either_naming(c, argv, mention=mention)
                for rel in sorted(set(snapshot(c.dir)) - before, reverse=True):
                    q = c.p(rel)
                    shutil.rmtree(q) if os.path.isdir(q) and not os.path.islink(q) else os.remove(q)
    # One half of a pair: lora_up without lora_down, lora_down without lora_up, alpha alone.
    for what, drop in (("up_only", [".lora_down.weight"]), ("down_only", [".lora_up.weight"]),
                       ("alpha_only", [".lora_down.weight", ".lora_up.weight"])):
        t = {k: v for k, v in t0.items() if not any(k == mod + d for d in drop)}
        c = kcase(what, t)
        for argv in (KMERGE, ["convert", "k.safetensors", "--to", "peft", "--out", "p"], ["inspect", "k.safetensors"]):
            run(c, argv, mention=["k.safetensors", ("fc1", mod)])
    # One module twice: kohya names and the old diffusers text-encoder names
    # (`text_encoder.<module>.lora.down.weight`, diffusers' pre-PEFT attention processors).
    dmod = "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    for what, extra in (
        ("old_diffusers_twin", {dmod + ".lora.down.weight": t0[mod + ".lora_down.weight"],
                                dmod + ".lora.up.weight": t0[mod + ".lora_up.weight"]}),
        ("lora_linear_layer_twin", {"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight":
                                    t0[mod + ".lora_down.weight"],
                                    "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight":
                                    t0[mod + ".lora_up.weight"]}),
        ("te1_twin", {mod.replace("lora_te_", "lora_te1_") + s: t0[mod + s]
                      for s in (".lora_down.weight", ".lora_up.weight", ".alpha")}),
    ):
        t = dict(t0)
        t.update(extra)
        c = kcase(what, t)
        for argv in (KMERGE, ["convert", "k.safetensors", "--to", "peft", "--out", "p"]):
            run(c, argv, mention=["k.safetensors", ("fc1", mod)])
    # Rank mismatch inside a pair, and a conv-shaped down on a linear module.
    for what, lie in (
        ("rank_mismatch", lambda t: t.__setitem__(mod + ".lora_up.weight",
                                                   ("F32", [64, r - 1], t[mod + ".lora_up.weight"][2][:64 * (r - 1) * 4]))),
        ("down_4d_3x3", lambda t: t.__setitem__(mod + ".lora_down.weight",
                                                 ("F32", [r, 32, 3, 3], t[mod + ".lora_down.weight"][2] * 9))),
        ("up_f16_inf", lambda t: t.__setitem__(mod + ".lora_up.weight",
                                                ("F16", t[mod + ".lora_up.weight"][1],
                                                 with_bad("F16", t[mod + ".lora_up.weight"][2], INF)))),
    ):
        t = dict(t0)
        lie(t)
        c = kcase(what, t)
        for argv in (KMERGE, ["convert", "k.safetensors", "--to", "peft", "--out", "p"]):
            if what == "up_f16_inf" and argv[0] == "convert":
                continue  # a conversion copies values (diff-able, not computed)
            run(c, argv, mention=["k.safetensors", ("fc1", mod)])


# ---------------------------------------------------------------- PEFT config fields of the wrong type or range
MERGE_QV = ["merge", "--base", "base", "--adapter", "qv", "--out", "o"]
CFG6 = {
    # verdict "refuse": PEFT raises on it (or the tensors cannot be that adapter); "either": PEFT
    # loads it (lorakit may refuse it too, naming adapter_config.json).
    "r_float_8": (lambda j: j.update(r=8.0), "either"),
    "r_float_8_5": (lambda j: j.update(r=8.5), "refuse"),
    "r_negative": (lambda j: j.update(r=-8), "refuse"),
    "r_zero": (lambda j: j.update(r=0), "refuse"),
    "r_true": (lambda j: j.update(r=True), "either"),
    "r_null": (lambda j: j.update(r=None), "either"),
    "r_list": (lambda j: j.update(r=[8]), "refuse"),
    "r_object": (lambda j: j.update(r={"q_proj": 8}), "refuse"),
    "alpha_string": (lambda j: j.update(lora_alpha="16"), "refuse"),
    "alpha_null": (lambda j: j.update(lora_alpha=None), "either"),
    "alpha_bool": (lambda j: j.update(lora_alpha=True), "either"),
    "alpha_list": (lambda j: j.update(lora_alpha=[16]), "refuse"),
    "alpha_1e400": ("raw", '"lora_alpha": 1e400'),
    "alpha_huge": (lambda j: j.update(lora_alpha=1e300), "refuse"),
    "use_rslora_string": (lambda j: j.update(use_rslora="yes"), "either"),
    "use_dora_string": (lambda j: j.update(use_dora="no"), "either"),
    "fan_in_fan_out_string": (lambda j: j.update(fan_in_fan_out="true"), "either"),
    "target_modules_regex_nothing": (lambda j: j.update(target_modules="^nothing$"), "either"),
    "target_modules_regex_all": (lambda j: j.update(target_modules=".*"), "either"),
    "target_modules_empty": (lambda j: j.update(target_modules=[]), "either"),
    "target_modules_bad_regex": (lambda j: j.update(target_modules="(q_proj"), "either"),
    "target_modules_number": (lambda j: j.update(target_modules=7), "either"),
    "layers_to_transform_99": (lambda j: j.update(layers_to_transform=[99]), "either"),
    "layers_to_transform_string": (lambda j: j.update(layers_to_transform="0"), "either"),
    "layers_to_transform_negative": (lambda j: j.update(layers_to_transform=-1), "either"),
    "rank_pattern_differs": (lambda j: j.update(rank_pattern={"q_proj": 4}), "refuse"),
    "rank_pattern_zero": (lambda j: j.update(rank_pattern={"q_proj": 0}), "refuse"),
    "rank_pattern_negative": (lambda j: j.update(rank_pattern={"q_proj": -8}), "refuse"),
    "rank_pattern_string": (lambda j: j.update(rank_pattern={"q_proj": "8"}), "either"),
    "rank_pattern_float": (lambda j: j.update(rank_pattern={"q_proj": 8.5}), "refuse"),
    "rank_pattern_list": (lambda j: j.update(rank_pattern=[["q_proj", 8]]), "either"),
    "rank_pattern_bad_regex": (lambda j: j.update(rank_pattern={"(q_proj": 4}), "either"),
    "alpha_pattern_string": (lambda j: j.update(alpha_pattern={"q_proj": "x"}), "refuse"),
    "alpha_pattern_null": (lambda j: j.update(alpha_pattern={"q_proj": None}), "either"),
    "alpha_pattern_huge": (lambda j: j.update(alpha_pattern={"q_proj": 1e300}), "refuse"),
    "peft_type_loha": (lambda j: j.update(peft_type="LOHA"), "refuse"),
    "peft_type_number": (lambda j: j.update(peft_type=7), "refuse"),
    "peft_type_lowercase": (lambda j: j.update(peft_type="lora"), "either"),
    "peft_type_missing": (lambda j: j.pop("peft_type"), "either"),
    "task_type_unknown": (lambda j: j.update(task_type="NOPE"), "either"),
    "base_model_dotdot": (lambda j: j.update(base_model_name_or_path="../../../../etc"), "either"),
    "modules_to_save_nothing": (lambda j: j.update(modules_to_save=["nothing_here"]), "either"),
    "use_dora_without_magnitudes": (lambda j: j.update(use_dora=True), "either"),
    "bias_all_without_bias": (lambda j: j.update(bias="all"), "either"),
    "bias_unknown": (lambda j: j.update(bias="sometimes"), "either"),
    # PEFT's PeftModel.from_pretrained needs peft_type (KeyError); lorakit reads a missing one
    # as LORA with PEFT's LoraConfig defaults (r 8, lora_alpha 8).
    "empty_object": (lambda j: j.clear(), "either"),
    "r_missing": (lambda j: j.pop("r"), "either"),
    "alpha_missing": (lambda j: j.pop("lora_alpha"), "either"),
    "init_weights_garbage": (lambda j: j.update(init_lora_weights="garbage"), "either"),
    "layer_replication_garbage": (lambda j: j.update(layer_replication=[[0, 99]]), "either"),
    "trailing_garbage": ("raw_tail", "}}"),
    "utf8_bom": ("raw_bom", ""),
    # An unknown key (PEFT drops unknown keys with a warning): valid.
    "nul_in_key": ("raw_ok", '"r\\u0000": 8, "r": 8'),
}


def cfg6_write(c, rel, spec):
    p = c.p(rel)
    fn = spec[0]
    if fn in ("raw", "raw_ok"):
        txt = open(p).read()
        if "lora_alpha" in spec[1]:
            txt = txt.replace('"lora_alpha": 16', spec[1])
        else:
            txt = txt.replace('"r": 8', spec[1])
        open(p, "w").write(txt)
    elif fn == "raw_tail":
        open(p, "a").write(spec[1])
    elif fn == "raw_bom":
        b = open(p, "rb").read()
        open(p, "wb").write(b"\xef\xbb\xbf" + b)
    else:
        j = json.load(open(p))
        fn(j)
        json.dump(j, open(p, "w"), indent=2)


@case
def peft_config_types():
    for what, spec in CFG6.items():
        verdict = spec[1] if spec[0] not in ("raw", "raw_ok", "raw_tail", "raw_bom") else \
            ("either" if spec[0] == "raw_ok" or what == "utf8_bom" else "refuse")
        for cmd, argv in (("merge", MERGE_QV), ("resize", ["resize", "qv", "--rank", "2", "--out", "o"]),
                          ("convert", ["convert", "qv", "--to", "kohya", "--out", "o.safetensors"]),
                          ("check", ["check", "qv"])):
            c = Case(f"r6_cfg_{what}_{cmd}", (QV, "qv"), (BASE, "base"))
            cfg6_write(c, "qv/adapter_config.json", spec)
            mention = [("adapter_config.json",)]
            if what in ("peft_type_loha", "use_dora_without_magnitudes"):
                # The tensors say which part of the config lies: naming them is as good.
                mention = [("adapter_config.json", "adapter_model.safetensors")]
            if cmd == "check":
                # check reports on a folder (exit 1 with findings); a refusal must still be one line.
                either_naming(c, argv, mention=mention, refusals=(1, 2))
            elif verdict == "refuse":
                run(c, argv, mention=mention)
            else:
                either_naming(c, argv, mention=mention)
    # fan_in_fan_out on nn.Linear targets: PEFT warns and sets it False (lora/model.py
    # _create_new_module: "fan_in_fan_out is set to True but the target module is
    # `torch.nn.Linear`"), so the merge must equal the plain one (q_proj is square here: a
    # transposed ΔW would fit and differ).
    c = Case("r6_cfg_fan_in_fan_out_true_on_linear", (QV, "qv"), (QV, "qv_ff"), (BASE, "base"))
    c.json_edit("qv_ff/adapter_config.json", lambda j: j.update(fan_in_fan_out=True))
    same_output(c, ["merge", "--base", "base", "--adapter", "qv", "--out", "a"],
                ["merge", "--base", "base", "--adapter", "qv_ff", "--out", "b"], "a/model.safetensors",
                "b/model.safetensors")


# ---------------------------------------------------------------- tensor ranks vs the config, DoRA magnitudes
DORA = "llama/adapters/dora"
DQ = "base_model.model.model.layers.0.self_attn.q_proj"


@case
def peft_rank_and_dora():
    # Both factors of q_proj at rank 4 (a consistent pair) while the config says r = 8.
    c = Case("r6_peft_pair_rank4_config_r8", (QV, "qv"), (BASE, "base"))
    t, meta = st_tensors(c.p("qv/adapter_model.safetensors"))
    t[QA] = ("F32", [4, 64], t[QA][2][:4 * 64 * 4])
    b = floats("F32", t[QB][2])
    t[QB] = ("F32", [64, 4], f32([b[i * 8 + j] for i in range(64) for j in range(4)]))
    st_build(c.p("qv/adapter_model.safetensors"), t, meta)
    for argv in (MERGE_QV, ["resize", "qv", "--rank", "2", "--out", "o"],
                 ["convert", "qv", "--to", "kohya", "--out", "o.safetensors"]):
        run(c, argv, mention=[("adapter_config.json", "adapter_model.safetensors"), "q_proj"])
    # DoRA magnitudes: wrong length, wrong shape, non-finite in each float dtype.
    mag = DQ + ".lora_magnitude_vector"
    t0, meta = st_tensors(os.path.join(FX, DORA, "adapter_model.safetensors"))
    raw = t0[mag][2]
    lies = {
        "len_63": ("F32", [63], raw[:63 * 4], "refuse"),
        "len_65": ("F32", [65], raw + raw[:4], "refuse"),
        "len_1": ("F32", [1], raw[:4], "refuse"),
        "shape_64x1": ("F32", [64, 1], raw, "either"),
        "shape_1x64": ("F32", [1, 64], raw, "either"),
        "nan": ("F32", [64], with_bad("F32", raw, NAN), "refuse"),
        "f16_inf": ("F16", [64], with_bad("F16", raw, INF), "refuse"),
        "bf16_nan": ("BF16", [64], with_bad("BF16", raw, NAN), "refuse"),
        "f64_neginf": ("F64", [64], with_bad("F64", raw, -INF), "refuse"),
        "int": ("I32", [64], struct.pack("<64i", *([1] * 64)), "refuse"),
        "zero": ("F32", [64], f32([0.0] * 64), "either"),
    }
    for what, (dt, sh, nraw, verdict) in lies.items():
        # (convert: kohya cannot hold PEFT DoRA, refused before any tensor is read.)
        for cmd in ("merge", "resize"):
            c = Case(f"r6_dora_mag_{what}_{cmd}", (DORA, "d"), (BASE, "base"))
            t = dict(t0)
            t[mag] = (dt, sh, nraw)
            st_build(c.p("d/adapter_model.safetensors"), t, meta)
            argv = {"merge": ["merge", "--base", "base", "--adapter", "d", "--out", "o"],
                    "resize": ["resize", "d", "--rank", "2", "--base", "base", "--out", "o"],
                    "convert": ["convert", "d", "--to", "kohya", "--out", "o.safetensors"]}[cmd]
            mention = ["adapter_model.safetensors", "q_proj"]
            if verdict == "refuse" and not (cmd == "convert" and what in ("nan", "f16_inf", "bf16_nan", "f64_neginf")):
                run(c, argv, mention=mention)
            else:
                either_naming(c, argv, mention=mention)
    # A DoRA magnitude of a module the file has no factors for.
    c = Case("r6_dora_mag_orphan", (DORA, "d"), (BASE, "base"))
    t = dict(t0)
    t["base_model.model.model.layers.0.self_attn.k_proj.lora_magnitude_vector"] = ("F32", [32], raw[:128])
    st_build(c.p("d/adapter_model.safetensors"), t, meta)
    run(c, ["merge", "--base", "base", "--adapter", "d", "--out", "o"], mention=["adapter_model.safetensors", "k_proj"])


# ---------------------------------------------------------------- safetensors headers
def header_lies(h, data, k):
    """name -> (header bytes or None, data, mentions-the-tensor)."""
    def j(hh):
        return json.dumps(hh).encode()

    def edit(fn):
        hh = json.loads(json.dumps(h))
        fn(hh)
        return j(hh)
    o0, o1 = h[k]["data_offsets"]
    out = {
        "meta_int_value": (edit(lambda x: x.__setitem__("__metadata__", {"format": 1})), data, False),
        "meta_nested": (edit(lambda x: x.__setitem__("__metadata__", {"format": {"a": "b"}})), data, False),
        "meta_null_value": (edit(lambda x: x.__setitem__("__metadata__", {"format": None})), data, False),
        "meta_list": (edit(lambda x: x.__setitem__("__metadata__", ["pt"])), data, False),
        "meta_string": (edit(lambda x: x.__setitem__("__metadata__", "pt")), data, False),
        "offsets_reversed": (edit(lambda x: x[k].__setitem__("data_offsets", [o1, o0])), data, True),
        "offsets_negative": (edit(lambda x: x[k].__setitem__("data_offsets", [-4, o1 - o0 - 4])), data, True),
        "offsets_float": (edit(lambda x: x[k].__setitem__("data_offsets", [float(o0), float(o1)])), data, True),
        "offsets_three": (edit(lambda x: x[k].__setitem__("data_offsets", [o0, o1, o1])), data, True),
        "offsets_missing": (edit(lambda x: x[k].pop("data_offsets")), data, True),
        "offsets_past_end": (edit(lambda x: x[k].__setitem__("data_offsets", [len(data) - 4, len(data) - 4 + o1 - o0])),
                             data, True),
        "offsets_huge": (edit(lambda x: x[k].__setitem__("data_offsets", [2**63, 2**63 + o1 - o0])), data, True),
        "gap_at_end": (None, data + b"\0" * 16, False),
        "dtype_f8_e8m0": (edit(lambda x: x[k].update(dtype="F8_E8M0", shape=[o1 - o0])), data, True),
        "dtype_f4": (edit(lambda x: x[k].update(dtype="F4", shape=[2 * (o1 - o0)])), data, True),
        "dtype_u1": (edit(lambda x: x[k].update(dtype="U1", shape=[8 * (o1 - o0)])), data, True),
        "dtype_lowercase": (edit(lambda x: x[k].update(dtype="f32")), data, True),
        "dtype_number": (edit(lambda x: x[k].update(dtype=0)), data, True),
        "dtype_c64": (edit(lambda x: x[k].update(dtype="C64", shape=[(o1 - o0) // 8])), data, True),
        "shape_negative": (edit(lambda x: x[k].update(shape=[-8, -64])), data, True),
        "shape_float": (edit(lambda x: x[k].update(shape=[8.0, 64.0])), data, True),
        "shape_string": (edit(lambda x: x[k].update(shape="8x64")), data, True),
        "shape_overflow": (edit(lambda x: x[k].update(shape=[2**32, 2**32, 2**32])), data, True),
        "shape_overflow_wraps": (edit(lambda x: x[k].update(shape=[2**62, 4, (o1 - o0) // 4 + 1])), data, True),
        "shape_zero_dim_with_bytes": (edit(lambda x: x[k].update(shape=[0, 64])), data, True),
        "entry_not_object": (edit(lambda x: x.__setitem__(k, [x[k]["dtype"]])), data, True),
        "entry_extra_field": (edit(lambda x: x[k].update(extra=1)), data, False),
        "header_array": (j([h]), data, False),
        "header_not_json": (b"{not json", data, False),
        "header_nul_padding": (j(h) + b"\0" * 8, data, False),
        "header_empty_object_with_data": (b"{}", data, False),
        "header_leading_space": (b" " + j(h), data, False),
        "meta_bad_utf8": (edit(lambda x: x.__setitem__("__metadata__", {"format": "pt"})).replace(b'"pt"', b'"p\xfft"'),
                          data, False),
    }
    return out


@case
def st_header_lies():
    for target in ("adapter", "base"):
        src = os.path.join(FX, QV if target == "adapter" else BASE,
                           "adapter_model.safetensors" if target == "adapter" else "model.safetensors")
        h, data = st_read(src)
        k = QA if target == "adapter" else WQ
        fname = os.path.basename(src)
        for what, (hb, d, names_tensor) in header_lies(h, data, k).items():
            c = Case(f"r6_st_{target}_{what}", (QV, "qv"), (BASE, "base"))
            p = c.p("qv" if target == "adapter" else "base", fname)
            st_write(p, h, d, raw_header=hb)
            mention = [fname] + ([k] if names_tensor else [])
            if what in ("entry_extra_field", "header_leading_space", "dtype_f8_e8m0", "dtype_f4", "dtype_c64"):
                # Valid files for safetensors 0.8 (safe_open reads them: unknown fields are
                # ignored, JSON may start with a space, F8_E8M0/F4/C64 are dtypes): read, or
                # refused naming the file and the module; diff reports a difference (exit 1).
                for argv in (MERGE_QV, ["inspect", "qv" if target == "adapter" else "base"],
                             ["diff", "qv" if target == "adapter" else "base",
                              os.path.join(FX, QV if target == "adapter" else BASE)]):
                    before = set(snapshot(c.dir))
                    either_naming(c, argv, mention=[(fname, "base"), ("q_proj",)], refusals=(1, 2))
                    for rel in sorted(set(snapshot(c.dir)) - before, reverse=True):
                        q = c.p(rel)
                        shutil.rmtree(q) if os.path.isdir(q) and not os.path.islink(q) else os.remove(q)
                continue
            if what.startswith("offsets_past_end") or what == "offsets_huge":
                # The offsets no longer tile the data: the first tensor out of line is named
                # (safetensors 0.8 names the same one, lora_B / v_proj).
                mention = [fname]
            if what == "gap_at_end":
                mention = [fname]
            for argv in (MERGE_QV, ["inspect", "qv" if target == "adapter" else "base"],
                         ["diff", "qv" if target == "adapter" else "base", os.path.join(FX, QV if target == "adapter" else BASE)]):
                run(c, argv, mention=mention, rc=(2,))
    # Header lengths that lie: past the file, huge, zero, a file shorter than its length field.
    src = os.path.join(FX, QV, "adapter_model.safetensors")
    b = open(src, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    for what, body in (("len_past_end", struct.pack("<Q", len(b)) + b[8:]),
                       ("len_huge", struct.pack("<Q", 2**63) + b[8:]),
                       ("len_zero", struct.pack("<Q", 0) + b[8:]),
                       ("len_short_by_one", struct.pack("<Q", n - 1) + b[8:]),
                       ("file_7_bytes", b[:7]), ("file_empty", b""),
                       ("file_only_header", b[:8 + n])):
        c = Case(f"r6_st_hdr_{what}", (QV, "qv"), (BASE, "base"))
        open(c.p("qv/adapter_model.safetensors"), "wb").write(body)
        for argv in (MERGE_QV, ["inspect", "qv"], ["resize", "qv", "--rank", "2", "--out", "o"]):
            run(c, argv, mention=["adapter_model.safetensors"])


# ---------------------------------------------------------------- sharded bases
SH = "llama/base_sharded"
SHARD2 = "model-00002-of-00004.safetensors"


@case
def sharded_lies():
    def sc(name):
        return Case("r6_sharded_" + name, (SH, "base"), (QV, "qv"))
    idx = "base/model.safetensors.index.json"
    cmds = (MERGE_QV, ["inspect", "base"], ["diff", "base", "base"])
    # The Hugging Face cache's layout: shards are symlinks to blobs outside the folder. Valid.
    for what in ("outside", "inside_other_name"):
        c = sc("symlink_" + what)
        if what == "outside":
            os.makedirs(c.p("blobs"))
            os.rename(c.p("base", SHARD2), c.p("blobs", "abc123"))
            os.symlink("../blobs/abc123", c.p("base", SHARD2))
        else:
            os.rename(c.p("base", SHARD2), c.p("base", "blob"))
            os.symlink("blob", c.p("base", SHARD2))
        either_naming(c, MERGE_QV, mention=[SHARD2])
        STATS["cases"] += 1
        if not os.path.exists(c.p("o", "model.safetensors")) and not os.path.exists(c.p("o", "model.safetensors.index.json")):
            violation(c.name, "a symlinked shard (the HF cache layout) was refused", "")
    lies = {
        "weight_map_empty": lambda j: j.update(weight_map={}),
        "weight_map_missing": lambda j: j.pop("weight_map"),
        "weight_map_value_null": lambda j: j["weight_map"].update({WQ: None}),
        "weight_map_value_number": lambda j: j["weight_map"].update({WQ: 2}),
        "weight_map_value_empty": lambda j: j["weight_map"].update({WQ: ""}),
        "weight_map_value_dot": lambda j: j["weight_map"].update({WQ: "."}),
        "weight_map_value_folder": lambda j: j["weight_map"].update({WQ: "sub/"}),
        "weight_map_value_nul": lambda j: j["weight_map"].update({WQ: SHARD2 + "\0.x"}),
        "weight_map_value_backslash": lambda j: j["weight_map"].update({WQ: "..\\" + SHARD2}),
        "index_is_list": lambda j: [j],
        "total_size_string": lambda j: j["metadata"].update(total_size="big"),
        "total_size_lies": lambda j: j["metadata"].update(total_size=1),
    }
    for what, fn in lies.items():
        c = sc(what)
        if what == "weight_map_value_folder":
            os.makedirs(c.p("base", "sub"))
        p = c.p(idx)
        j = json.load(open(p))
        r = fn(j)
        json.dump(j if r is None else r, open(p, "w"))
        for argv in cmds:
            if what in ("total_size_string", "total_size_lies"):
                # transformers reads weight_map only; metadata is informational.
                before = set(snapshot(c.dir))
                either_naming(c, argv, mention=["model.safetensors.index.json"])
                for rel in sorted(set(snapshot(c.dir)) - before, reverse=True):
                    q = c.p(rel)
                    shutil.rmtree(q) if os.path.isdir(q) and not os.path.islink(q) else os.remove(q)
            else:
                run(c, argv, mention=[("model.safetensors.index.json", SHARD2, WQ, "sub")])
    # The index is not JSON, is empty, or is a folder; a shard is a folder.
    for what in ("index_not_json", "index_empty_file", "index_is_folder", "shard_is_folder", "shard_empty_file"):
        c = sc(what)
        if what == "index_not_json":
            open(c.p(idx), "w").write("{\"weight_map\": ")
        elif what == "index_empty_file":
            open(c.p(idx), "w").close()
        elif what == "index_is_folder":
            os.remove(c.p(idx))
            os.makedirs(c.p(idx))
        elif what == "shard_is_folder":
            os.remove(c.p("base", SHARD2))
            os.makedirs(c.p("base", SHARD2))
        else:
            open(c.p("base", SHARD2), "w").close()
        for argv in cmds:
            run(c, argv, mention=[("model.safetensors.index.json", SHARD2)])


# ---------------------------------------------------------------- outputs onto inputs, every form
@case
def out_alias_matrix():
    # (command, the input it must not write over, argv with OUT for the output).
    specs = {
        "merge_file": ("base/model.safetensors",
                       ["merge", "--base", "base/model.safetensors", "--adapter", "qv", "--out", "OUT"]),
        "resize": ("qv", ["resize", "qv", "--rank", "2", "--out", "OUT"]),
        "combine": ("qv2", ["combine", "--adapter", "qv", "--adapter", "qv2", "--method", "cat", "--out", "OUT"]),
        "convert_kohya_file": ("k.safetensors", ["convert", "k.safetensors", "--to", "kohya", "--out", "OUT"]),
        "convert_peft": ("qv", ["convert", "qv", "--to", "peft", "--out", "OUT"]),
        "dequantize": ("nf4", ["dequantize", "nf4", "--out", "OUT"]),
        "check_fix": ("qv", ["check", "qv", "--fix", "--out", "OUT"]),
        "train_init": ("qv", ["train", "--model", "base", "--data", "ids.safetensors", "--seq-len", "8", "--steps", "1",
                              "--batch", "1", "--init-adapter", "qv", "--out", "OUT"]),
        "eval_logits": ("ids.safetensors", ["eval", "--model", "base", "--input-ids", "ids.safetensors", "--seq-len", "8",
                                            "--device", "cpu", "--logits", "OUT"]),
        "extract_kohya": ("tuned.safetensors", ["extract", "--base", "base", "--tuned", "tuned.safetensors", "--out", "OUT", "--rank", "2",
                                            "--format", "kohya", "--device", "cpu"]),
    }
    for name, (inp, argv) in specs.items():
        isdir = not inp.endswith(".safetensors")
        forms = {"dot_slash": "./" + inp, "dot_in_middle": os.path.dirname(inp) + "/./" + os.path.basename(inp)
                 if "/" in inp else "./" + inp + ("/." if isdir else ""),
                 "double_slash": inp + "//" if isdir else inp.replace("/", "//"),
                 "symlink": "ln", "symlink_chain": "ln2", "symlinked_parent": "lp/" + os.path.basename(inp),
                 "abs": None}
        if not isdir:
            forms["hardlink"] = "hl.safetensors"
        for form, out in forms.items():
            c = Case(f"r6_alias_{name}_{form}", (BASE, "base"), (QV, "qv"), (QV, "qv2"), ("quant/nf4", "nf4"),
                     ("kohya/te_lora.safetensors", "k.safetensors"), ("text/tiny_ids.safetensors", "ids.safetensors"),
                     (TUNED, "tuned.safetensors"))
            if form == "symlink":
                os.symlink(inp, c.p("ln"))
            elif form == "symlink_chain":
                os.symlink(inp, c.p("ln"))
                os.symlink("ln", c.p("ln2"))
            elif form == "symlinked_parent":
                parent = os.path.dirname(inp) or "."
                os.symlink(parent if parent != "." else ".", c.p("lp"))
            elif form == "hardlink":
                os.link(c.p(inp), c.p("hl.safetensors"))
            elif form == "abs":
                out = c.p(inp)
            run(c, [a if a != "OUT" else out for a in argv], mention=[("also an input", "must be a folder",
                                                                       "is a folder", "is a file")])


# ---------------------------------------------------------------- NaN / inf in each stored dtype
@case
def nonfinite_dtypes():
    # The base weight in F32/F16/BF16 with one NaN or inf: the merge must name the base file and
    # the tensor (not the output).
    for dt in ("F32", "F16", "BF16"):
        for bad, tag in ((NAN, "nan"), (INF, "inf")):
            c = Case(f"r6_base_{dt.lower()}_{tag}", (BASE, "base"), (QV, "qv"))
            f = c.p("base/model.safetensors")
            t, meta = st_tensors(f)
            t[WQ] = (dt, t[WQ][1], with_bad(dt, t[WQ][2], bad))
            st_build(f, t, meta)
            run(c, MERGE_QV, mention=["model.safetensors", WQ])
            c2 = Case(f"r6_base_{dt.lower()}_{tag}_unadapted", (BASE, "base"), (QV, "qv"))
            f = c2.p("base/model.safetensors")
            k = "model.layers.0.mlp.up_proj.weight"
            t, meta = st_tensors(f)
            t[k] = (dt, t[k][1], with_bad(dt, t[k][2], bad))
            st_build(f, t, meta)
            # A tensor no module adapts is copied as it is: a NaN there is the base's business
            # (transformers loads it too); copied or refused naming it.
            either_naming(c2, MERGE_QV, mention=["model.safetensors", k])
    # Adapter factors in F64 and F8 with a non-finite value.
    a_raw = st_tensors(os.path.join(FX, QV, "adapter_model.safetensors"))[0][QA][2]
    for what, (dt, raw) in {
        "f64_nan": ("F64", with_bad("F64", a_raw, NAN)),
        "f64_huge": ("F64", encode("F64", [1e300] + floats("F32", a_raw)[1:])),
        "f8_e4m3_nan": ("F8_E4M3", b"\x7f" + b"\x08" * (8 * 64 - 1)),
        "f8_e5m2_inf": ("F8_E5M2", b"\x7c" + b"\x08" * (8 * 64 - 1)),
        "f16_max_overflow": ("F16", b"\xff\x7b" * (8 * 64)),
    }.items():
        for cmd, argv in (("merge", MERGE_QV), ("resize", ["resize", "qv", "--rank", "2", "--out", "o"]),
                          ("combine", ["combine", "--adapter", "qv", "--adapter", "qv2", "--method", "svd", "--rank", "4",
                                       "--out", "o"])):
            c = Case(f"r6_factor_{what}_{cmd}", (BASE, "base"), (QV, "qv"), (QV, "qv2"))
            f = c.p("qv/adapter_model.safetensors")
            t, meta = st_tensors(f)
            t[QA] = (dt, [8, 64], raw)
            st_build(f, t, meta)
            if what == "f16_max_overflow":
                # 65504 everywhere: finite factors whose product overflows f16 but not f32.
                either_naming(c, argv, mention=["adapter_model.safetensors", "q_proj"])
            else:
                run(c, argv, mention=["adapter_model.safetensors", "q_proj"])
    # Quantized scales not tried before.
    Q = "model.layers.0.self_attn.q_proj"
    lies = {
        "awq4": {"scales_nan": (Q + ".scales", "F16", lambda r: b"\x00\x7e" + r[2:]),
                 "scales_inf": (Q + ".scales", "F16", lambda r: b"\x00\x7c" + r[2:])},
        "ct_pack": {"scale_nan": (Q + ".weight_scale", "BF16", lambda r: b"\xc0\x7f" + r[2:]),
                    "scale_inf": (Q + ".weight_scale", "BF16", lambda r: b"\x80\x7f" + r[2:])},
        "ct_fp8": {"scale_nan": (Q + ".weight_scale", "BF16", lambda r: b"\xc0\x7f" + r[2:]),
                   "weight_nan_byte": (Q + ".weight", "F8_E4M3", lambda r: b"\x7f" + r[1:])},
        "comfy_fp8": {"scale_nan": (Q + ".scale_weight", "F32", lambda r: f32([NAN])),
                      "weight_nan_byte": (Q + ".weight", "F8_E4M3", lambda r: b"\xff" + r[1:])},
        "nf4": {"quant_map_nan": (Q + ".weight.quant_map", "F32", lambda r: f32([NAN]) + r[4:])},
        "nf4_dq": {"nested_absmax_nan": (Q + ".weight.nested_absmax", "F32", lambda r: f32([NAN])),
                   "nested_quant_map_inf": (Q + ".weight.nested_quant_map", "F32", lambda r: f32([INF] * (len(r) // 4)))},
        "int8": {"scb_inf_one": (Q + ".SCB", "F32", lambda r: f32([INF]) + r[4:])},
    }
    for fx, table in lies.items():
        for what, (k, dt, fn) in table.items():
            for cmd in ("dequantize", "merge"):
                c = Case(f"r6_quant_{fx}_{what}_{cmd}", (f"quant/{fx}", "base"), (QV, "qv"))
                f = c.p("base/model.safetensors")
                t, meta = st_tensors(f)
                if k not in t:
                    print(f"note: {c.name}: no {k}; case skipped")
                    STATS["skipped"] += 1
                    continue
                t[k] = (t[k][0], t[k][1], fn(t[k][2]))
                st_build(f, t, meta)
                argv = ["dequantize", "base", "--out", "out"] if cmd == "dequantize" else \
                    ["merge", "--base", "base", "--adapter", "qv", "--out", "out"]
                run(c, argv, mention=[("model.safetensors", "config.json"), Q])
