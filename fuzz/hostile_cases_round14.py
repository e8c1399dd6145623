"""Round-14 cases of fuzz/hostile_round.py: code no earlier round attacked.

  * round14_ct_fp4_lies: compressed-tensors NVFP4 / MXFP4 bases (fixtures/quant/ct_nvfp4,
    ct_mxfp4; src/io/quant/ct_fp4.rs, ct_scan.rs): a `weight_shape` that lies (or of another
    dtype), scales of other shapes and dtypes, NVFP4 global scales 0 / NaN / ±inf / negative /
    denormal / of another shape, E4M3 NaN scale bytes, E8M0 255 (2^128) and 254 under large
    codes, odd and non-dividing packed widths, a zero point, a global scale beside MXFP4, config
    `weights` of other bits / group size / strategy / `type`, the top-level `format` string of
    the other scheme, an `ignore` list naming a stored FP4 module, a base mixing NVFP4 and MXFP4
    modules with and without the config that says so; through `merge` (keep, the default, and
    `--quant dequantize`), `dequantize`, `inspect` and `check --base`;
  * round14_tuner_lies: the PEFT tuners added in session 13 (HiRA, GLoRA, PVeRA, TinyLoRA,
    UniLoRA, FRoD, TRAINABLE_TOKENS, BEFT, DEFT, PEANuT, Super-Tuning, AdaMSS, QALoRA;
    src/adapter/formats/peft/*): configs contradicting the stored shapes (r, u, depth,
    theta_d_length, num_subspaces, token_indices, sparsity, qalora_group_size), missing
    tensors, NaN/inf in the stored dtype (F32 and F16), index tensors out of range, negative or
    of a float dtype (UniLoRA, Super-Tuning, FRoD, trainable tokens);
  * round14_layout_lies: lay8's ComfyUI key maps (src/adapter/mapping/layouts*): Flux
    `linear1_qkv` whose rows do not split in three, one module spelled in two layouts,
    HunyuanVideo and ACE-Step names against the wrong base.

Every lie here is one the producer refuses or cannot load (PEFT's load_state_dict with
strict shapes, compressed-tensors' decompress, ComfyUI's key map), so the expected outcome is
a refusal naming the file and tensor; `either` marks the cases where lorakit may accept a
consistent input.

Results, 2026-12-07, debug build, as root. This file's three functions: 1,156 cases in 94-259 s.
Against main's binary at f5746ea (before this round's fixes): 103 violated checks in 31 case
folders (round14_ct_fp4_lies 60 in 10, round14_tuner_lies 43 in 21, round14_layout_lies 0 of
41). Fixed (tests in tests/it/hostile14.rs, each failing on that binary):
  * an NVFP4 `weight_global_scale` of +inf or -inf: every group's scale `e4m3 / inf` is 0,
    finite, so merge (keep and dequantize) and dequantize wrote a weight of zeros, exit 0; now
    refused like 0 and NaN, naming the global scale (io/quant/mod.rs);
  * a config group whose weights say `type: int` (compressed-tensors then decompresses the
    module as integer pack-quantized), a `type` its validator refuses ("nope", 4), or
    `symmetric: false` (a zero point FP4 never stores) beside FP4 tensors: merged and
    dequantized, exit 0; now refused naming config.json, the group and the module
    (io/quant/ct_config.rs, ct_scan.rs; `type` is also compared for pack-quantized and FP8);
  * a GLoRA lora path with `.Xu` but no `.Xd`: a panic (exit 101, glora.rs indexing the
    `.zeros` leaf) in merge, inspect and check; now one line naming the module and path;
  * adapter_config.json values that make PEFT build other shapes than the stored tensors,
    ignored and the stored tensors merged (exit 0): HiRA `r` (8, 2^40), TinyLoRA `u` (4, 16,
    0, -8) and `r`, UniLoRA `theta_d_length` (32, 128, 0, -64), `r`, and a theta_d grown to
    128, FRoD `sparse_rate` (-1, 2: PEFT's config refuses; 0.5: PEFT draws 2048 positions, the
    file holds 40), GLoRA `config_A_B` (vector, constant, "nope") and `r`; each checked with
    PeftModel.from_pretrained (fixtures/gen/hostile14_peft_check.py: refused, or for
    config_A_B vector loaded with the stored lora factors dropped).
Cases corrected after reading the producer (the first run counted them): a `weight_shape`
"transposed" on the square q_proj is the true shape (now a reshaped [2·rows, cols/2]); QALoRA's
group size on a float base (PEFT applies QALoRA to GPTQ layers only, as round 13 found); GLoRA
`config_C: vector` on a base without a bias (PEFT builds an empty C whatever it says: loads);
index tensors stored as U8 (PEFT's `copy_` casts them into its int64 buffer); refusals naming
the adapter folder and module rather than the file name (a tensor that does not fit the base
weight, a Super-Tuning count against `sparsity`).
Accepted as valid (not counted): a negative NVFP4 global scale (compressed-tensors divides by
it: the signs flip, consistently); a top-level `format` naming the other FP4 scheme, or
`pack-quantized` (compressed-tensors 0.20 infers each module's format from its scheme); an
`ignore` list naming stored FP4 modules and a group targeting nothing (the stored layout is
read); a base mixing NVFP4 and MXFP4 modules where the config gives q_proj its own MXFP4 group
(beside an NVFP4 group whose Python-only look-behind target lorakit cannot evaluate, or with
explicit targets) merges; where the one NVFP4 group covers it, it is refused.
On this round's final binary: 1,156 cases, 0 violations.
"""
import json, os, struct

from hostile_cases_round5 import INF, NAN, either, st_set
from hostile_lib import BASE, Case, case, f32, run, run_ok, st_edit, st_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fx(rel):
    return os.path.join(ROOT, "fixtures", rel)


def _f16(vals):
    return struct.pack("<%de" % len(vals), *vals)


def _i64(vals):
    return struct.pack("<%dq" % len(vals), *vals)


def _i32(vals):
    return struct.pack("<%di" % len(vals), *vals)


def _m(x):
    return x if isinstance(x, tuple) else (x,)


# ---------------------------------------------------------------- compressed-tensors FP4
QP = "model.layers.0.self_attn.q_proj"
AD = "llama/adapters/rslora_all"


def _ct_cmds(c, refuse, mention, dq=True):
    """merge (keep and dequantize), dequantize: refuse naming `mention` (refuse True; "merge":
    only the merges; False: refuse cleanly or succeed); inspect and check never panic."""
    mb = ["merge", "--base", "base", "--adapter", "ad", "--out", "o"]
    cmds = [mb, mb + ["--quant", "dequantize"]]
    if dq:
        cmds.append(["dequantize", "base", "--out", "dq"])
    for argv in cmds:
        if refuse is True or (refuse == "merge" and argv[0] == "merge"):
            run(c, argv, mention=[_m(mention)])
        else:
            either(c, argv)
    either(c, ["inspect", "base"])
    either(c, ["check", "ad", "--base", "base"], refusals=(1, 2))


def _group(fn):
    def edit(j):
        g = j["quantization_config"]["config_groups"]["group_0"]
        fn(g, j["quantization_config"])
    return edit


@case
def round14_ct_fp4_lies():
    for fx in ("ct_nvfp4", "ct_mxfp4"):
        t0, _ = st_tensors(_fx("quant/%s/model.safetensors" % fx))
        P, S, G = QP + ".weight_packed", QP + ".weight_scale", QP + ".weight_global_scale"
        pdt, psh, praw = t0[P]
        sdt, ssh, sraw = t0[S]
        rows, half = psh
        cols = 2 * half
        ns = len(sraw)
        nv = fx == "ct_nvfp4"
        lies = {
            "shape_i64_lie": (st_set(QP + ".weight_shape", "I64", [2], _i64([rows, cols * 2])), True),
            "shape_i64_reshaped": (st_set(QP + ".weight_shape", "I64", [2], _i64([rows * 2, cols // 2])), True),
            "shape_i64_true": (st_set(QP + ".weight_shape", "I64", [2], _i64([rows, cols])), False),
            "shape_i32_true": (st_set(QP + ".weight_shape", "I32", [2], _i32([rows, cols])), False),
            "shape_f32": (st_set(QP + ".weight_shape", "F32", [2], f32([rows, cols])), True),
            "shape_3": (st_set(QP + ".weight_shape", "I64", [3], _i64([1, rows, cols])), True),
            "shape_neg": (st_set(QP + ".weight_shape", "I64", [2], _i64([-rows, cols])), True),
            "scale_wide": (st_set(S, sdt, [rows, ssh[1] * 2], sraw + sraw), True),
            "scale_narrow": (st_set(S, sdt, [rows, ssh[1] // 2], sraw[:ns // 2]), True),
            "scale_transposed": (st_set(S, sdt, [ssh[1], rows], sraw), True),
            "scale_1d": (st_set(S, sdt, [ns], sraw), True),
            "scale_3d": (st_set(S, sdt, [1] + ssh, sraw), True),
            "scale_f16": (st_set(S, "F16", ssh, _f16([1.0] * ns)), True),
            "scale_bf16": (st_set(S, "BF16", ssh, b"\x80\x3f" * ns), True),
            "scale_f32": (st_set(S, "F32", ssh, f32([1.0] * ns)), True),
            "scale_i8": (st_set(S, "I8", ssh, sraw), True),
            "scale_missing": (lambda t: t.pop(S), True),
            "packed_odd_cols": (lambda t: (st_set(P, "U8", [rows, half - 1], praw[:rows * (half - 1)])(t)), True),
            "packed_plus_one": (lambda t: (st_set(P, "U8", [rows, half + 1], praw + b"\0" * rows)(t)), True),
            "packed_1d": (st_set(P, "U8", [rows * half], praw), True),
            "packed_3d": (st_set(P, "U8", [1, rows, half], praw), True),
            "packed_i8": (st_set(P, "I8", psh, praw), True),
            "packed_half_rows": (st_set(P, "U8", [rows // 2, half], praw[:len(praw) // 2]), True),
            "packed_zero_rows": (lambda t: (st_set(P, "U8", [0, half], b"")(t), st_set(S, sdt, [0, ssh[1]], b"")(t)), True),
            "zero_point": (st_set(QP + ".weight_zero_point", sdt, ssh, b"\0" * ns), True),
            "packed_missing": (lambda t: t.pop(P), True),
            "weight_beside": (st_set(QP + ".weight", "F32", [rows, cols], b"\0" * (4 * rows * cols)), True),
        }
        if nv:
            lies.update({
                "global_zero": (st_set(G, "F32", [1], f32([0.0])), True),
                "global_neg_zero": (st_set(G, "F32", [1], f32([-0.0])), True),
                "global_nan": (st_set(G, "F32", [1], f32([NAN])), True),
                "global_inf": (st_set(G, "F32", [1], f32([INF])), True),
                "global_neg_inf": (st_set(G, "F32", [1], f32([-INF])), True),
                "global_negative": (st_set(G, "F32", [1], f32([-448.0])), False),
                "global_denormal": (st_set(G, "F32", [1], struct.pack("<I", 1)), True),
                "global_scalar": (st_set(G, "F32", [], f32([448.0])), True),
                "global_2": (st_set(G, "F32", [2], f32([448.0, 448.0])), True),
                "global_f16": (st_set(G, "F16", [1], _f16([448.0])), True),
                "global_bf16": (st_set(G, "BF16", [1], b"\xe0\x43"), True),
                "global_missing": (lambda t: t.pop(G), True),
                "scale_e4m3_nan": (st_set(S, sdt, ssh, b"\x7f" + sraw[1:]), True),
                "scale_e4m3_neg_nan": (st_set(S, sdt, ssh, sraw[:-1] + b"\xff"), True),
                "scale_all_zero": (st_set(S, sdt, ssh, b"\0" * ns), False),
                "scale_max": (st_set(S, sdt, ssh, b"\x7e" * ns), False),
                "scale_as_u8": (st_set(S, "U8", [rows, cols // 32], sraw[:rows * cols // 32]), False),
            })
        else:
            lies.update({
                "e8m0_255": (st_set(S, sdt, ssh, b"\xff" + sraw[1:]), True),
                "e8m0_255_last": (st_set(S, sdt, ssh, sraw[:-1] + b"\xff"), True),
                "e8m0_254": (st_set(S, sdt, ssh, b"\xfe" * ns), True),
                "e8m0_zero": (st_set(S, sdt, ssh, b"\0" * ns), False),
                "global_beside": (st_set(G, "F32", [1], f32([1.0])), True),
                "scale_as_e4m3": (st_set(S, "F8_E4M3", [rows, cols // 16], (sraw * 2)[:rows * cols // 16]), False),
            })
        for what, (fn, refuse) in lies.items():
            c = Case("r14_ctfp4_%s_%s" % (fx, what), ("quant/" + fx, "base"), (AD, "ad"))
            st_edit(c.p("base/model.safetensors"), fn)
            _ct_cmds(c, refuse, ("q_proj",))
        other = "mxfp4" if nv else "nvfp4"
        mine = "nvfp4" if nv else "mxfp4"
        cfg_lies = {
            "bits_8": (_group(lambda g, q: g["weights"].__setitem__("num_bits", 8)), True),
            "bits_2": (_group(lambda g, q: g["weights"].__setitem__("num_bits", 2)), True),
            "group_other": (_group(lambda g, q: g["weights"].__setitem__("group_size", 32 if nv else 16)), True),
            "group_7": (_group(lambda g, q: g["weights"].__setitem__("group_size", 7)), True),
            "strategy_channel": (_group(lambda g, q: g["weights"].__setitem__("strategy", "channel")), True),
            "strategy_tensor": (_group(lambda g, q: g["weights"].__setitem__("strategy", "tensor")), True),
            "type_int": (_group(lambda g, q: g["weights"].__setitem__("type", "int")), True),
            "type_bogus": (_group(lambda g, q: g["weights"].__setitem__("type", "nope")), True),
            "type_number": (_group(lambda g, q: g["weights"].__setitem__("type", 4)), True),
            "asymmetric": (_group(lambda g, q: g["weights"].__setitem__("symmetric", False)), True),
            "format_other": (_group(lambda g, q: q.__setitem__("format", other + "-pack-quantized")), False),
            "format_int": (_group(lambda g, q: q.__setitem__("format", "pack-quantized")), False),
            "format_number": (_group(lambda g, q: q.__setitem__("format", 4)), False),
            "ignore_q_proj": (_group(lambda g, q: q.__setitem__("ignore", ["lm_head", "re:.*q_proj"])), False),
            "ignore_all_linear": (_group(lambda g, q: q.__setitem__("ignore", ["re:.*"])), False),
            "ignore_not_list": (_group(lambda g, q: q.__setitem__("ignore", "lm_head")), True),
            "targets_none": (_group(lambda g, q: g.__setitem__("targets", [])), False),
            "weights_null": (_group(lambda g, q: g.__setitem__("weights", None)), False),
            "method_other": (_group(lambda g, q: q.__setitem__("quant_method", "fp8")), False),
        }
        for what, (fn, refuse) in cfg_lies.items():
            c = Case("r14_ctfp4cfg_%s_%s" % (mine, what), ("quant/" + fx, "base"), (AD, "ad"))
            c.json_edit("base/config.json", fn)
            _ct_cmds(c, refuse, ("config.json", "q_proj"))
    # A base mixing the schemes: layer 0's q_proj MXFP4, the rest NVFP4.
    tm, _ = st_tensors(_fx("quant/ct_mxfp4/model.safetensors"))

    def mixed(t):
        t.pop(QP + ".weight_global_scale")
        for leaf in ("weight_packed", "weight_scale"):
            t[QP + "." + leaf] = tm[QP + "." + leaf]
    mx_group = {"targets": ["re:.*layers\\.0\\.self_attn\\.q_proj$"],
                "weights": {"num_bits": 4, "type": "float", "strategy": "group", "group_size": 32,
                            "symmetric": True, "dynamic": False, "scale_dtype": "torch.uint8"}}

    def with_mx_group(j):
        q = j["quantization_config"]
        q["config_groups"]["group_1"] = json.loads(json.dumps(mx_group))
        q["config_groups"]["group_0"]["targets"] = ["re:.*(?<!layers\\.0\\.self_attn\\.q)_proj$"]
        q["format"] = "mixed-precision"
    for what, cfg, refuse in (("no_config", None, True), ("config_says_so", with_mx_group, False),
                              ("explicit_targets", "raw", False)):
        c = Case("r14_ctfp4mix_" + what, ("quant/ct_nvfp4", "base"), (AD, "ad"))
        st_edit(c.p("base/model.safetensors"), mixed)
        if cfg == "raw":
            def plain(j):
                q = j["quantization_config"]
                q["config_groups"]["group_1"] = json.loads(json.dumps(mx_group))
                q["config_groups"]["group_0"]["targets"] = ["re:.*mlp.*", "re:.*layers\\.1\\..*", "re:.*[kvo]_proj$"]
            c.json_edit("base/config.json", plain)
        elif cfg is not None:
            c.json_edit("base/config.json", cfg)
        _ct_cmds(c, refuse, ("q_proj",))
    # The honest bases: every command succeeds (a check of the harness itself).
    for fx in ("ct_nvfp4", "ct_mxfp4"):
        c = Case("r14_ctfp4ok_" + fx, ("quant/" + fx, "base"), (AD, "ad"))
        run_ok(c, ["merge", "--base", "base", "--adapter", "ad", "--out", "o"])
        run_ok(c, ["dequantize", "base", "--out", "dq"])


# ---------------------------------------------------------------- PEFT tuners of session 13
MODEL = "adapter_model.safetensors"
CONF = "adapter_config.json"
PFX = "base_model.model.model.layers.0.self_attn."


def _tuner_case(name, fx, base=BASE):
    return Case("r14_tuner_" + name, (fx + "/adapter", "ad"), (base, "base"))


def _tuner_cmds(c, refuse, mention):
    mb = ["merge", "--base", "base", "--adapter", "ad", "--out", "o"]
    if refuse:
        run(c, mb, mention=[_m(mention)])
    else:
        either(c, mb)
    either(c, ["inspect", "ad"])
    either(c, ["check", "ad", "--base", "base"], refusals=(1, 2))


def _cfg(**kw):
    def fn(j):
        for k, v in kw.items():
            if v is KeyError:
                j.pop(k, None)
            else:
                j[k] = v
    return fn


def _nan_first(name, dt="F32"):
    """`name`'s first value set to NaN (F32) or +inf (F16, stored as F16)."""
    def fn(t):
        d, sh, raw = t[name]
        if d == "F32" and dt == "F32":
            t[name] = (d, sh, f32([NAN]) + raw[4:])
        elif d == "F32":
            vals = list(struct.unpack("<%df" % (len(raw) // 4), raw))
            vals[0] = INF
            t[name] = ("F16", sh, _f16(vals))
    return fn


def _transpose(name):
    def fn(t):
        d, sh, raw = t[name]
        t[name] = (d, list(reversed(sh)), raw)
    return fn


def _grow(name, axis):
    def fn(t):
        d, sh, raw = t[name]
        sh = list(sh)
        sh[axis] *= 2
        t[name] = (d, sh, raw + raw)
    return fn


TUNERS = {
    # fixture: (a float tensor of layer 0's q_proj, the rank-like config keys and their lies)
    "gaps13a/hira": (PFX + "q_proj.hira_A", {"r": (8, 0, -4, 2 ** 40, "4")}),
    "gaps13a/glora": ("base_model.model.model.layers.0.mlp.down_proj.glora_A.Xd",
                      {"r": (8, 0, -4), "config_A_B": ("vector", "constant", "nope"), "config_C": ("vector",)}),
    "gaps13a/pvera": (PFX + "q_proj.pvera_lambda_b", {"r": (8, 0, -4)}),
    "gaps13a/tinylora": (PFX + "q_proj.tinylora_A", {"r": (4, 0, -2), "u": (4, 16, 0, -8)}),
    "gaps13a/unilora": ("base_model.unilora_theta_d", {"r": (8, 0), "theta_d_length": (32, 128, 0, -64)}),
    "gaps13a/frod": ("base_model.frod_V.self_attn_q_proj", {"sparse_rate": (-1.0, 2.0, 0.5)}),
    "gaps13a/tokens": ("base_model.model.model.embed_tokens.trainable_tokens_delta",
                       {"token_indices": ([5, 1], [5, 1, 9, 2], [5, 1, 200], [5, 1, -1], [5, 5, 9], "5")}),
    "gaps13b/beft": (PFX + "q_proj.beft_bias", {}),
    "gaps13b/deft_qr": (PFX + "q_proj.deft_P", {"r": (8, 2, 0, -4), "decomposition_method": ("nope",)}),
    "gaps13b/peanut": (PFX + "q_proj.peanut_A.weight",
                       {"r": (8, 0), "depth": (3, 1, 0, -1), "act_fn": ("nope",), "scaling": (NAN, INF)}),
    "gaps13b/super": (PFX + "q_proj.supertuning_values", {"sparsity": (0.5, 0.0, 1.0, 1.5, -0.1)}),
    "gaps13b/adamss1": (PFX + "q_proj.adamss_B.0", {"r": (4, 16, 0), "num_subspaces": (3, 0, -1),
                                                    "subspace_rank": (4, 0)}),
    "gaps12/qalora_float": (None, {"qalora_group_size": (3, 0, -16, 1000), "r": (16, 0)}),
}


@case
def round14_tuner_lies():
    for fx, (tensor, keys) in TUNERS.items():
        name = fx.split("/")[1]
        t0, _ = st_tensors(_fx(fx + "/adapter/" + MODEL))
        if tensor is None:
            tensor = next(k for k, v in t0.items() if v[0] == "F32" and "q_proj" in k)
        for key, values in keys.items():
            for i, v in enumerate(values):
                c = _tuner_case("%s_cfg_%s_%d" % (name, key, i), fx)
                c.json_edit("ad/" + CONF, _cfg(**{key: v}))
                # Values PEFT accepts with the stored tensors may merge: duplicate token ids;
                # config_C on a base without a bias (PEFT builds an empty C whatever it says);
                # QALoRA's group size on a float base (PEFT applies QALoRA to GPTQ layers only).
                ok = ((name == "tokens" and v == [5, 5, 9]) or (key == "config_C" and v == "vector")
                      or name == "qalora_float")
                _tuner_cmds(c, not ok, (CONF, MODEL, "ad:"))
        shape = t0[tensor][1]
        tensor_lies = {
            "nan": _nan_first(tensor),
            "f16_inf": _nan_first(tensor, "F16"),
            "missing": lambda t, n=tensor: t.pop(n),
            "grown0": _grow(tensor, 0),
        }
        if len(shape) == 2 and shape[0] != shape[1]:
            tensor_lies["transposed"] = _transpose(tensor)
        if len(shape) >= 2:
            tensor_lies["grown_last"] = _grow(tensor, len(shape) - 1)
        for what, fn in tensor_lies.items():
            c = _tuner_case("%s_t_%s" % (name, what), fx)
            st_edit(c.p("ad/" + MODEL), fn)
            _tuner_cmds(c, True, (MODEL, CONF, "ad:", tensor.split(".")[-1], tensor))
    # Index tensors: out of range, negative, of a float dtype, of another length.
    idx = {
        "gaps13a/unilora": (PFX + "q_proj.unilora_indices_A", 64),
        "gaps13b/super": (PFX + "q_proj.supertuning_indices", 64 * 64),
        "gaps13a/frod": ("base_model.frod_s_indices.self_attn_q_proj", 64),
    }
    for fx, (n, bound) in idx.items():
        name = fx.split("/")[1]
        t0, _ = st_tensors(_fx(fx + "/adapter/" + MODEL))
        d, sh, raw = t0[n]
        w = 8 if d == "I64" else 4
        fmt = "<q" if d == "I64" else "<i"
        cnt = len(raw) // w
        vals = list(struct.unpack("<%d%s" % (cnt, fmt[1]), raw))

        def packed(vs, d=d, fmt=fmt):
            return b"".join(struct.pack(fmt, x) for x in vs)
        lies = {
            "at_bound": st_set(n, d, sh, packed([bound] + vals[1:])),
            "huge": st_set(n, d, sh, packed(vals[:-1] + [2 ** 31 - 1])),
            "negative": st_set(n, d, sh, packed([-1] + vals[1:])),
            "very_negative": st_set(n, d, sh, packed([-(2 ** 31)] + vals[1:])),
            "as_f32": st_set(n, "F32", sh, f32([float(x) for x in vals])),
            "as_u8": st_set(n, "U8", sh, bytes(x & 0xFF for x in vals)),
            "short": st_set(n, d, [sh[0] - 1] + sh[1:] if len(sh) == 1 else [sh[0], sh[1] - 1],
                            packed(vals[:cnt - (1 if len(sh) == 1 else sh[0])])),
            "missing": lambda t, n=n: t.pop(n),
        }
        if d == "I64":
            lies["past_i32"] = st_set(n, d, sh, packed([2 ** 40] + vals[1:]))
            lies["as_i32_same"] = st_set(n, "I32", sh, _i32(vals))
        else:
            lies["as_i64_same"] = st_set(n, "I64", sh, _i64(vals))
        for what, fn in lies.items():
            c = _tuner_case("%s_idx_%s" % (name, what), fx)
            st_edit(c.p("ad/" + MODEL), fn)
            # PEFT copies a stored buffer of another integer dtype into its int64 one
            # (`copy_` casts): the same values, or U8 values, load.
            same = (what.startswith("as_i") and what.endswith("_same")) or what == "as_u8"
            _tuner_cmds(c, not same, (MODEL, n.split(".")[-1], n))
    # FRoD's s_size and Super-Tuning's values/indices length mismatch.
    c = _tuner_case("frod_s_size_lie", "gaps13a/frod")
    st_edit(c.p("ad/" + MODEL), st_set("base_model.frod_s_size.self_attn_q_proj", "I64", [2], _i64([64, 128])))
    _tuner_cmds(c, True, (MODEL, "frod_s_size"))
    c = _tuner_case("frod_s_size_neg", "gaps13a/frod")
    st_edit(c.p("ad/" + MODEL), st_set("base_model.frod_s_size.self_attn_q_proj", "I64", [2], _i64([-64, 64])))
    _tuner_cmds(c, True, (MODEL, "frod_s_size"))
    c = _tuner_case("super_values_short", "gaps13b/super")
    st_edit(c.p("ad/" + MODEL), lambda t: t.__setitem__(
        PFX + "q_proj.supertuning_values", ("F32", [408], t[PFX + "q_proj.supertuning_values"][2][:408 * 4])))
    _tuner_cmds(c, True, (MODEL, "supertuning"))
    # Trainable tokens on a base with fewer rows than the largest id.
    c = _tuner_case("tokens_small_vocab", "gaps13a/tokens")
    c.json_edit("ad/" + CONF, _cfg(token_indices=[5, 1, 127]))
    either(c, ["merge", "--base", "base", "--adapter", "ad", "--out", "o"])
    c.json_edit("ad/" + CONF, _cfg(token_indices=[5, 1, 128]))
    run(c, ["merge", "--base", "base", "--adapter", "ad", "--out", "o"], mention=[(CONF, MODEL, "128")])


# ---------------------------------------------------------------- lay8's ComfyUI key maps
D13 = "diffusion13/"


def _lay_case(name, fx, adapter):
    return Case("r14_layout_" + name, (D13 + fx + "/base.safetensors", "base.safetensors"),
                (D13 + fx + "/" + adapter + ".safetensors", "ad.safetensors"))


LM = ["merge", "--base", "base.safetensors", "--adapter", "ad.safetensors", "--out", "o.safetensors"]


@case
def round14_layout_lies():
    Q = "diffusion_model.single_blocks.0.linear1_qkv."
    t0, _ = st_tensors(_fx(D13 + "flux_comfy_bfl/comfy_qkv.safetensors"))
    up = t0[Q + "lora_up.weight"]
    rows_lies = {"rows_47": 47, "rows_49": 49, "rows_51": 51, "rows_96": 96, "rows_24": 24, "rows_0": 0}
    for fx in ("flux_comfy_bfl", "flux_comfy_diffusers"):
        for what, rows in rows_lies.items():
            c = _lay_case("%s_qkv_%s" % (fx, what), fx, "comfy_qkv")
            raw = (up[2] * 3)[:rows * 2 * 4]
            st_edit(c.p("ad.safetensors"), st_set(Q + "lora_up.weight", "F32", [rows, 2], raw))
            run(c, LM, mention=[("linear1_qkv", "linear1", "single_blocks.0")])
            either(c, ["check", "ad.safetensors", "--base", "base.safetensors"], refusals=(1, 2))
        # One module twice: linear1_qkv and its unsplit linear1 in one file.
        c = _lay_case("%s_qkv_and_linear1" % fx, fx, "comfy_qkv")

        def twice(t):
            for k in list(t):
                if k.startswith(Q):
                    t[k.replace("linear1_qkv", "linear1")] = t[k]
        st_edit(c.p("ad.safetensors"), twice)
        either(c, LM)
        # NaN in the up factor.
        c = _lay_case("%s_qkv_nan" % fx, fx, "comfy_qkv")
        st_edit(c.p("ad.safetensors"), _nan_first(Q + "lora_up.weight"))
        run(c, LM, mention=[("linear1_qkv", "linear1")])
    # HunyuanVideo on ComfyUI's layout: a qkv of rows not three equal parts, both spellings of
    # one module, and the file against Flux's and ACE-Step's bases.
    H = "transformer.double_blocks.0.img_attn_qkv."
    th, _ = st_tensors(_fx(D13 + "hunyuan_video_comfy/dpipe.safetensors"))
    for what, rows in {"rows_23": 23, "rows_25": 25, "rows_48": 48}.items():
        c = _lay_case("hv_qkv_" + what, "hunyuan_video_comfy", "dpipe")
        st_edit(c.p("ad.safetensors"), st_set(H + "lora_B.weight", "F32", [rows, 2], (th[H + "lora_B.weight"][2] * 2)[:rows * 8]))
        run(c, LM, mention=[("img_attn_qkv", "img_attn.qkv", "img_attn")])
    c = _lay_case("hv_both_spellings", "hunyuan_video_comfy", "dpipe")
    st_edit(c.p("ad.safetensors"), lambda t: [t.__setitem__(k.replace("img_attn_qkv", "img_attn.qkv"), t[k])
                                              for k in list(t) if k.startswith(H)])
    run(c, LM, mention=[("img_attn", "ad.safetensors")])
    for other in ("flux_comfy_bfl", "ace_step15_comfy"):
        c = Case("r14_layout_hv_on_" + other, (D13 + other + "/base.safetensors", "base.safetensors"),
                 (D13 + "hunyuan_video_comfy/dpipe.safetensors", "ad.safetensors"))
        run(c, LM, mention=[("ad.safetensors", "double_blocks", "single_blocks", "txt_in")])
        either(c, ["check", "ad.safetensors", "--base", "base.safetensors"], refusals=(1, 2))
    # ACE-Step PEFT names onto the wrong bases, a layer the base lacks, both spellings.
    A = "base_model.model.layers.0.self_attn.q_proj."
    for other in ("flux_comfy_bfl", "hunyuan_video_comfy"):
        c = Case("r14_layout_ace_on_" + other, (D13 + other + "/base.safetensors", "base.safetensors"),
                 (D13 + "ace_step15_comfy/peft.safetensors", "ad.safetensors"))
        run(c, LM, mention=[("ad.safetensors", "layers.0")])
    c = _lay_case("ace_layer_5", "ace_step15_comfy", "peft")
    st_edit(c.p("ad.safetensors"), lambda t: [t.__setitem__(k.replace("layers.0", "layers.5"), t.pop(k))
                                              for k in list(t) if k.startswith(A)])
    run(c, LM, mention=[("layers.5",)])
    c = _lay_case("ace_both_spellings", "ace_step15_comfy", "peft")
    st_edit(c.p("ad.safetensors"), lambda t: [t.__setitem__(k.replace("base_model.model.layers", "base_model.model.decoder.layers"), t[k])
                                              for k in list(t) if k.startswith(A)])
    run(c, LM, mention=[("q_proj",)])
    c = _lay_case("ace_rows_lie", "ace_step15_comfy", "peft")
    st_edit(c.p("ad.safetensors"), _grow(A + "lora_B.weight", 0))
    run(c, LM, mention=[("q_proj",)])
