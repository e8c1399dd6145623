"""Round-11 cases of fuzz/hostile_round.py: the code added in round 10's session (no hostile round
has seen it) and the classes rounds 1-10 left out.

Rounds 1-10 covered (see hostile_round.py and the docstrings of hostile_cases_round6.py to
hostile_cases_round10.py): lies in every input format's header and tensors, sizes no file can
back, names (1 MiB, empty, surrogates), output paths onto inputs in every spelling, existing
outputs, read-only and full disks, `ulimit -f/-n/-v`, signals, concurrent writers, truncation
while mapped, thread counts, GGUF alphas of every type, tied embeddings, BFL control LoRAs,
LTX-2/Flux.3 roots, special files as inputs, PEFT regexes Python refuses too. What they missed,
tried here:
  * mlx_config_lies: Apple mlx-lm adapter folders (fixtures/mlx) whose adapter_config.json lies:
    lora_parameters missing or of another type, rank 0/negative/float/string/huge/another
    number, scale NaN/inf/string/huge, dropout missing, num_layers 0/negative/huge/float/string
    or fewer than the blocks the file adapts (mlx-lm's `model.layers[-max(num_layers, 0):]`),
    keys a string/empty/non-strings/names no module, fine_tune_type unknown or null;
  * mlx_tensor_lies: adapters.safetensors with factors of two ranks, 3-D (MoE) factors,
    transposed shapes, half pairs, an unknown leaf, a DoRA `m` of the wrong length/missing/NaN,
    f16/bf16 NaN, integer factors, a module the base lacks, a config that says lora over full
    weights and full over LoRA factors;
  * mlx_out_onto_input: `--to mlx` (and the other writers) onto the input folder;
  * peft_tuner_lies: PEFT VeRA / VB-LoRA / HRA / BOFT / DeLoRA / LN-tuning folders
    (fixtures/gaps10): the shared vera_A/vera_B missing or of the wrong shape, lambdas of the
    wrong length or NaN, VB-LoRA top-k past the vector count or a bank of the wrong width, HRA
    rank 0, BOFT blocks that do not divide the width, DeLoRA lambda NaN/inf and w_norm lies;
  * flux2_lokr_lies: diffusers Flux.2 LoKr files (fixtures/diffusion10/flux2_lokr) whose
    Kronecker factors do not multiply to the base's shape, half factors, alpha of the wrong shape;
  * mlx_quant_base: MLX-quantized bases (U32 `P.weight` + `P.scales`/`P.biases`) that lie;
  * metadata_shapes: safetensors `__metadata__` null, a list, a string, nested objects;
  * regex_dialects: PEFT regexes Python's `re` refuses but the `regex` crate compiles (multiple
    repeat, `\\z`, `\\pL`, `(?<n>…)`, `(?U)`), and the reverse (look-around, backreferences,
    possessive): each must finish in seconds; `layers_to_transform` of 10^6 entries.

Results, 2026-12-06, debug build, as root. Against the binary of be96761 (before this round's
fixes), this file's 1,409 cases: 43 violated checks in 22 case folders. Fixed (tests in
tests/it/hostile11.rs, each failing against that binary):
  * resize of a module with factors near f32::MAX (lora_b 3e38): a panic inside faer's SVD
    ("NoConvergence", exit 101): now one line naming the adapter and module (ops/resize.rs);
  * mlx-lm `num_layers` fewer than the blocks the file adapts: merged, where load_adapters
    refuses (adapter/formats/mlx.rs);
  * 12 target_modules regexes the `regex` crate reads but Python's `re` refuses (multiple
    repeat, `\z`, `\pL`, `\\x{..}`, `(?<n>…)`, `(?U)`, `(?-u:…)`, flags mid-pattern or negated
    globally, `.{1000}{1000}`: round 10's known gap): merged; now refused naming
    adapter_config.json (adapter/formats/peft/targets.rs);
  * PEFT VeRA `r`, HRA `r`, VB-LoRA `num_vectors`/`vector_length`, BOFT block fields
    contradicting the stored shapes (6 cases): merged from the tensors, where PEFT builds the
    layers from the config and refuses the state dict (peft/{vera,hra,vblora,boft}.rs). (Two
    butterfly-factor cases were dropped after review: a CPU PEFT sets the factor to 1 and loads.)
Accepted as valid (not counted), after reading the producer: mlx-lm `num_layers` 0, negative or
huge (`model.layers[-max(n, 0):]` is every block); a finite scale of 1e308 whose merge overflows,
refused naming the base tensor (the convention of every merge); VeRA `save_projection: "yes"`
(truthy in Python); `__metadata__: null` (the safetensors crate reads no metadata) and a
too-deep header refused as "not valid JSON" naming the file; an MLX-quantized weight on a module
no adapter changes, copied as stored; an output written into a PEFT folder's new subfolder.
Known (counted apart when over 20 s; slow, never wrong): each rank_pattern key is its own Regex
whose first is_match builds its search cache: 1,000 keys took 12.7 s and 10,000 keys 81 s on the
loaded machine; a 10^5-alternative target_modules 25-45 s.
The whole round, all eleven files, on this round's final binary (hos11 at fb7e369): 7,538 cases
in 1,553 s on the loaded machine, 0 violations, 0 skipped, 0 known.
"""
import json, os, struct, time

from hostile_cases_round5 import INF, NAN, either, f32z, st_set
from hostile_lib import BASE, QV, STATS, Case, case, f32, run, st_edit, st_read, st_tensors, st_write, violation

MB = ["merge", "--base", "base", "--adapter", "ad", "--out", "o"]


def _f16(vals):
    return struct.pack("<%de" % len(vals), *vals)


def _bf16(vals):
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


def _others(c, check_base=True):
    """The commands that read the adapter without writing onto it: each refused cleanly or done."""
    either(c, ["inspect", "ad"])
    either(c, ["check", "ad"], refusals=(1, 2))
    if check_base:
        either(c, ["check", "ad", "--base", "base"], refusals=(1, 2))
    either(c, ["convert", "ad", "--to", "peft", "--out", "conv"])
    either(c, ["resize", "ad", "--rank", "2", "--out", "r"])


# ---------------------------------------------------------------- mlx-lm configs
MLX_CFG = "ad/adapter_config.json"


def _lp(**kw):
    def fn(j):
        for k, v in kw.items():
            if v is KeyError:
                j["lora_parameters"].pop(k, None)
            else:
                j["lora_parameters"][k] = v
    return fn


def _alpha_not_scale(j):
    """A PEFT-style alpha where mlx-lm reads scale (linear_to_lora_layers: KeyError)."""
    j["lora_parameters"].pop("scale")
    j["lora_parameters"]["alpha"] = 80


def _top(k, v):
    def fn(j):
        if v is KeyError:
            j.pop(k, None)
        else:
            j[k] = v
    return fn


@case
def mlx_config_lies():
    # (edit, mention): mention None = valid for mlx-lm (merged or refused cleanly).
    lies = {
        "lp_missing": (_top("lora_parameters", KeyError), "lora_parameters"),
        "lp_null": (_top("lora_parameters", None), "lora_parameters"),
        "lp_list": (_top("lora_parameters", [4, 0.0, 20.0]), "lora_parameters"),
        "lp_string": (_top("lora_parameters", "rank=4"), "lora_parameters"),
        "rank_0": (_lp(rank=0), "rank"),
        "rank_neg": (_lp(rank=-4), "rank"),
        "rank_float": (_lp(rank=4.5), "rank"),
        "rank_string": (_lp(rank="4"), "rank"),
        "rank_huge": (_lp(rank=2 ** 64), "rank"),
        "rank_3": (_lp(rank=3), "rank"),
        "rank_missing": (_lp(rank=KeyError), "rank"),
        "scale_string": (_lp(scale="20"), "scale"),
        "scale_null": (_lp(scale=None), "scale"),
        "scale_missing_alpha": (_alpha_not_scale, "scale"),
        "scale_huge": (_lp(scale=1e308), None),
        "scale_neg": (_lp(scale=-20.0), None),
        "scale_zero": (_lp(scale=0.0), None),
        "dropout_missing": (_lp(dropout=KeyError), "dropout"),
        "dropout_string": (_lp(dropout="0"), "dropout"),
        "num_layers_missing": (_top("num_layers", KeyError), "num_layers"),
        "num_layers_string": (_top("num_layers", "2"), "num_layers"),
        "num_layers_float": (_top("num_layers", 2.5), "num_layers"),
        "num_layers_null": (_top("num_layers", None), "num_layers"),
        # mlx-lm adapts model.layers[-max(n, 0):]: 0 and negatives are every block (valid), 1
        # is block 2 only, and the file also adapts block 1 (load_adapters refuses it).
        "num_layers_0": (_top("num_layers", 0), None),
        "num_layers_neg": (_top("num_layers", -5), None),
        "num_layers_huge": (_top("num_layers", 2 ** 62), None),
        "num_layers_1": (_top("num_layers", 1), "num_layers"),
        "keys_string": (_lp(keys="self_attn.q_proj"), "keys"),
        "keys_empty": (_lp(keys=[]), "keys"),
        "keys_ints": (_lp(keys=[1, 2]), "keys"),
        "keys_object": (_lp(keys={"self_attn.q_proj": 1}), "keys"),
        "keys_short_names": (_lp(keys=["q_proj", "v_proj"]), "keys"),
        "tune_qlora": (_top("fine_tune_type", "qlora"), "fine_tune_type"),
        "tune_upper": (_top("fine_tune_type", "LoRA"), "fine_tune_type"),
        "tune_int": (_top("fine_tune_type", 1), "fine_tune_type"),
        "tune_full_over_lora": (_top("fine_tune_type", "full"), ("lora_a", "lora_b", "no base tensor", "match")),
        "tune_dora_no_m": (_top("fine_tune_type", "dora"), "m"),
    }
    for what, (fn, mention) in lies.items():
        c = Case(f"r11_mlxcfg_{what}", ("mlx/base", "base"), ("mlx/lora", "ad"))
        c.json_edit(MLX_CFG, fn)
        if mention is None:
            either(c, MB)
        else:
            run(c, MB, mention=["ad", mention if isinstance(mention, tuple) else (mention,)])
        _others(c)
    raws = {
        "not_json": b"{\"lora_parameters\": {",
        "empty": b"",
        "list": b"[]",
        "nan_token": b"{\"fine_tune_type\": \"lora\", \"num_layers\": 2, \"lora_parameters\": "
                     b"{\"rank\": 4, \"dropout\": 0.0, \"scale\": NaN}}",
        "inf_token": b"{\"fine_tune_type\": \"lora\", \"num_layers\": 2, \"lora_parameters\": "
                     b"{\"rank\": 4, \"dropout\": 0.0, \"scale\": Infinity}}",
        "huge_exponent": b"{\"fine_tune_type\": \"lora\", \"num_layers\": 2, \"lora_parameters\": "
                         b"{\"rank\": 4, \"dropout\": 0.0, \"scale\": 1e999}}",
        "bom": b"\xef\xbb\xbf{\"fine_tune_type\": \"lora\", \"num_layers\": 2, \"lora_parameters\": "
               b"{\"rank\": 4, \"dropout\": 0.0, \"scale\": 20.0}}",
    }
    for what, raw in raws.items():
        c = Case(f"r11_mlxcfg_raw_{what}", ("mlx/base", "base"), ("mlx/lora", "ad"))
        c.write(MLX_CFG, raw)
        run(c, MB, mention=["adapter_config.json"]) if what != "bom" else either(c, MB)
        _others(c)


# ---------------------------------------------------------------- mlx-lm tensors
LA = "model.layers.1.self_attn.q_proj.lora_a"
LB = "model.layers.1.self_attn.q_proj.lora_b"
DM = "model.layers.0.self_attn.q_proj.m"


def _vals(t, k):
    dt, sh, raw = t[k]
    return list(struct.unpack("<%df" % (len(raw) // 4), raw))


@case
def mlx_tensor_lies():
    lies = {
        "a_rank_3": (st_set(LA, "F32", [16, 3], f32z(48)), "q_proj"),
        "all_rank_3": (lambda t: [t.__setitem__(k, ("F32", ([t[k][1][0], 3] if k.endswith("_a") else [3, t[k][1][1]]),
                                                    f32z(3 * (t[k][1][0] if k.endswith("_a") else t[k][1][1]))))
                                  for k in list(t)], "rank"),
        "a_3d": (st_set(LA, "F32", [2, 16, 4], f32z(128)), "q_proj"),
        "b_3d": (st_set(LB, "F32", [2, 4, 16], f32z(128)), "q_proj"),
        "both_3d": (lambda t: (st_set(LA, "F32", [2, 16, 4], f32z(128))(t), st_set(LB, "F32", [2, 4, 16],
                                                                                   f32z(128))(t)), "q_proj"),
        "a_transposed": (st_set(LA, "F32", [4, 16], f32z(64)), "q_proj"),
        "both_transposed": (lambda t: (st_set(LA, "F32", [4, 16], f32z(64))(t), st_set(LB, "F32", [16, 4],
                                                                                      f32z(64))(t)), "q_proj"),
        "a_1d": (st_set(LA, "F32", [64], f32z(64)), "q_proj"),
        "a_zero_in": (st_set(LA, "F32", [0, 4], b""), "q_proj"),
        "b_zero_out": (st_set(LB, "F32", [4, 0], b""), "q_proj"),
        "a_in_17": (st_set(LA, "F32", [17, 4], f32z(68)), "q_proj"),
        "b_out_15": (st_set(LB, "F32", [4, 15], f32z(60)), "q_proj"),
        "half_b": (lambda t: t.pop(LB), "q_proj"),
        "half_a": (lambda t: t.pop(LA), "q_proj"),
        "leaf_weight": (lambda t: t.__setitem__("model.layers.1.self_attn.q_proj.weight", ("F32", [16, 16],
                                                                                         f32z(256))), "q_proj"),
        "leaf_m_on_lora": (st_set("model.layers.1.self_attn.q_proj.m", "F32", [16], f32z(16, 1.0)), "q_proj"),
        "no_module": (lambda t: t.__setitem__("lora_a", ("F32", [16, 4], f32z(64))), "lora_a"),
        "b_nan": (lambda t: t.__setitem__(LB, ("F32", t[LB][1], f32([NAN] + _vals(t, LB)[1:]))), ("q_proj", "NaN",
                                                                                                  "finite")),
        "b_inf": (lambda t: t.__setitem__(LB, ("F32", t[LB][1], f32([INF] + _vals(t, LB)[1:]))), ("q_proj", "inf",
                                                                                                  "finite")),
        "b_f16_nan": (lambda t: t.__setitem__(LB, ("F16", t[LB][1], _f16([NAN] + _vals(t, LB)[1:]))),
                      ("q_proj", "NaN", "finite")),
        "a_bf16_nan": (lambda t: t.__setitem__(LA, ("BF16", t[LA][1], _bf16([NAN] + _vals(t, LA)[1:]))),
                       ("q_proj", "NaN", "finite")),
        "b_f16_ok": (lambda t: t.__setitem__(LB, ("F16", t[LB][1], _f16(_vals(t, LB)))), None),
        "a_i32": (lambda t: t.__setitem__(LA, ("I32", t[LA][1], t[LA][2])), "q_proj"),
        "a_f64": (lambda t: t.__setitem__(LA, ("F64", t[LA][1], struct.pack("<%dd" % 64, *_vals(t, LA)))), None),
        "module_not_in_base": (lambda t: (t.__setitem__(LA.replace("q_proj", "nope"), t[LA]),
                                          t.__setitem__(LB.replace("q_proj", "nope"), t[LB])), "nope"),
        "block_past_base": (lambda t: (t.__setitem__(LA.replace("layers.1", "layers.7"), t[LA]),
                                       t.__setitem__(LB.replace("layers.1", "layers.7"), t[LB])), "layers.7"),
        "empty_file": (lambda t: t.clear(), "adapters.safetensors"),
        "b_huge": (lambda t: t.__setitem__(LB, ("F32", t[LB][1], f32([3e38] * 64))), None),
    }
    for what, (fn, mention) in lies.items():
        c = Case(f"r11_mlxt_{what}", ("mlx/base", "base"), ("mlx/lora", "ad"))
        st_edit(c.p("ad/adapters.safetensors"), fn)
        if mention is None:
            either(c, MB)
        else:
            run(c, MB, mention=["ad", mention if isinstance(mention, tuple) else (mention,)])
        _others(c)
    dora = {
        "m_15": (st_set(DM, "F32", [15], f32z(15, 1.0)), "m"),
        "m_2d": (st_set(DM, "F32", [16, 1], f32z(16, 1.0)), "m"),
        "m_missing": (lambda t: t.pop(DM), "q_proj"),
        "m_nan": (st_set(DM, "F32", [16], f32([NAN] + [1.0] * 15)), ("q_proj", "NaN", "finite")),
        "m_bf16_nan": (st_set(DM, "BF16", [16], _bf16([NAN] + [1.0] * 15)), ("q_proj", "NaN", "finite")),
        "m_zero": (st_set(DM, "F32", [16], f32z(16, 0.0)), None),
        "m_i64": (st_set(DM, "I64", [16], b"\1" + b"\0" * 127), "m"),
    }
    for what, (fn, mention) in dora.items():
        c = Case(f"r11_mlxd_{what}", ("mlx/base", "base"), ("mlx/dora", "ad"))
        st_edit(c.p("ad/adapters.safetensors"), fn)
        if mention is None:
            either(c, MB)
        else:
            run(c, MB, mention=["ad", mention if isinstance(mention, tuple) else (mention,)])
        _others(c)
    # Full fine-tunes: a weight of the wrong shape, NaN, a name the base lacks; configs that lie.
    FW = "model.layers.2.self_attn.q_proj.weight"
    full = {
        "w_shape": (st_set(FW, "F32", [16, 15], f32z(240)), "q_proj"),
        "w_nan": (st_set(FW, "F32", [16, 16], f32([NAN] + [0.0] * 255)), "q_proj"),
        "w_not_in_base": (lambda t: t.__setitem__("model.layers.2.self_attn.nope.weight", t[FW]), "nope"),
        "w_1d": (st_set(FW, "F32", [256], f32z(256)), "q_proj"),
    }
    for what, (fn, mention) in full.items():
        c = Case(f"r11_mlxf_{what}", ("mlx/base", "base"), ("mlx/full", "ad"))
        st_edit(c.p("ad/adapters.safetensors"), fn)
        run(c, MB, mention=["ad", (mention, "adapters.safetensors")])
        _others(c)
    c = Case("r11_mlxf_cfg_says_lora", ("mlx/base", "base"), ("mlx/full", "ad"))
    c.copy("mlx/lora/adapter_config.json", MLX_CFG)
    run(c, MB, mention=["ad", ("weight", "not an mlx-lm")])
    _others(c)


@case
def mlx_out_onto_input():
    for src in ("mlx/lora", "mlx/dora", "mlx/peft_mixed"):
        c = Case("r11_onto_" + src.replace("/", "_"), ("mlx/base", "base"), (src, "ad"))
        for argv in (["convert", "ad", "--to", "mlx", "--out", "ad"], ["convert", "ad", "--to", "mlx", "--out", "./ad/"],
                     ["convert", "ad", "--to", "peft", "--out", "ad"], ["resize", "ad", "--rank", "1", "--out", "ad"],
                     ["merge", "--base", "base", "--adapter", "ad", "--out", "ad"],
                     ["merge", "--base", "base", "--adapter", "ad", "--out", "base"],
                     *([["convert", "ad", "--to", "mlx", "--out", "ad/adapters.safetensors"]]
                       if src != "mlx/peft_mixed" else []),
                     ["check", "ad", "--base", "base", "--fix", "--out", "ad"]):
            run(c, argv, rc=(2, 3), mention=[("ad", "base")])


# ---------------------------------------------------------------- PEFT tuners of gaps10
G = "gaps10/"
P = "base_model.model.model.layers.0."


def _peft(name, fixture, fn=None, cfg=None, mention=None):
    c = Case(f"r11_tuner_{name}", (BASE, "base"), (G + fixture + "/adapter", "ad"))
    if fn is not None:
        st_edit(c.p("ad/adapter_model.safetensors"), fn)
    if cfg is not None:
        c.json_edit("ad/adapter_config.json", cfg)
    if mention is None:
        either(c, MB)
    else:
        run(c, MB, mention=["ad", mention if isinstance(mention, tuple) else (mention,)])
    _others(c)


@case
def peft_tuner_lies():
    VA, VB = "base_model.vera_A", "base_model.vera_B"
    vera = {
        "a_missing": (lambda t: t.pop(VA), None, "vera_A"),
        "b_missing": (lambda t: t.pop(VB), None, "vera_B"),
        "a_rank_3": (st_set(VA, "F32", [3, 128], f32z(384)), None, ("vera_A", "vera_lambda_d", "rank")),
        "a_narrow": (st_set(VA, "F32", [4, 32], f32z(128)), None, ("vera_A", "down_proj")),
        "b_short": (st_set(VB, "F32", [16, 4], f32z(64)), None, ("vera_B", "q_proj", "down_proj")),
        "a_transposed": (st_set(VA, "F32", [128, 4], f32z(512)), None, "vera_A"),
        "a_3d": (st_set(VA, "F32", [1, 4, 128], f32z(512)), None, "vera_A"),
        "a_nan": (st_set(VA, "F32", [4, 128], f32([NAN] + [0.01] * 511)), None, ("vera_A", "NaN", "finite")),
        "lambda_d_3": (st_set(P + "mlp.down_proj.vera_lambda_d", "F32", [3], f32z(3)), None, "down_proj"),
        "lambda_b_63": (st_set(P + "mlp.down_proj.vera_lambda_b", "F32", [63], f32z(63)), None, "down_proj"),
        "lambda_b_nan": (st_set(P + "mlp.down_proj.vera_lambda_b", "F32", [64], f32([NAN] * 64)), None,
                         ("down_proj", "NaN", "finite")),
        "lambda_d_missing": (lambda t: t.pop(P + "mlp.down_proj.vera_lambda_d"), None, "down_proj"),
        "lambda_2d": (st_set(P + "mlp.down_proj.vera_lambda_d", "F32", [4, 1], f32z(4)), None, "down_proj"),
        "cfg_r_3": (None, lambda j: j.update(r=3), ("rank", "vera", "r")),
        "cfg_noproj_with_tensors": (None, lambda j: j.update(save_projection=False), None),
        "cfg_proj_string": (None, lambda j: j.update(save_projection="yes"), None),
    }
    for what, (fn, cfg, mention) in vera.items():
        _peft("vera_" + what, "vera", fn, cfg, mention)
    _peft("vera_noproj", "vera_noproj", mention=("save_projection", "projection"))
    _peft("vera_noproj_r0", "vera_noproj", cfg=lambda j: j.update(r=0), mention=("save_projection", "r"))
    VBK = "base_model.vblora_vector_bank"
    LGA = P + "self_attn.q_proj.vblora_logits_A"
    vb = {
        "topk_17": (None, lambda j: j.update(topk=17), "topk"),
        "topk_0": (None, lambda j: j.update(topk=0), "topk"),
        "topk_neg": (None, lambda j: j.update(topk=-1), "topk"),
        "num_vectors_8": (None, lambda j: j.update(num_vectors=8), ("num_vectors", "vector")),
        "vector_length_8": (None, lambda j: j.update(vector_length=8), ("vector_length", "vector")),
        "bank_15": (st_set(VBK, "F32", [15, 16], f32z(240)), None, ("vector_bank", "logits")),
        "bank_len_15": (st_set(VBK, "F32", [16, 15], f32z(240)), None, ("vector_bank", "q_proj")),
        "bank_missing": (lambda t: t.pop(VBK), None, "vector_bank"),
        "bank_nan": (st_set(VBK, "F32", [16, 16], f32([NAN] + [0.01] * 255)), None, ("vector_bank", "NaN", "finite")),
        "logits_15": (st_set(LGA, "F32", [4, 4, 15], f32z(240)), None, "q_proj"),
        "logits_rank_3": (st_set(LGA, "F32", [3, 4, 16], f32z(192)), None, "q_proj"),
        "logits_2d": (st_set(LGA, "F32", [16, 16], f32z(256)), None, "q_proj"),
        "logits_nan": (st_set(LGA, "F32", [4, 4, 16], f32([NAN] * 256)), None, ("q_proj", "NaN", "finite")),
        "logits_all_inf": (st_set(LGA, "F32", [4, 4, 16], f32([INF] * 256)), None, ("q_proj", "inf", "finite")),
    }
    for what, (fn, cfg, mention) in vb.items():
        _peft("vblora_" + what, "vblora", fn, cfg, mention)
    TKW = P + "self_attn.q_proj.vblora_logits_A_topk_weights"
    TKI = P + "self_attn.q_proj.vblora_logits_A_topk_indices"
    _peft("vbtopk_weights_shape", "vblora_topk", st_set(TKW, "F32", [4, 4, 2], f32z(32)), mention="q_proj")
    _peft("vbtopk_indices_past_bank", "vblora_topk",
          lambda t: t.__setitem__(TKI, (t[TKI][0], t[TKI][1], b"\x7f" * len(t[TKI][2]))) if TKI in t else None,
          mention=("q_proj", "index", "vector"))
    _peft("vbtopk_indices_missing", "vblora_topk", lambda t: t.pop(TKI, None), mention="q_proj")
    HU = P + "self_attn.q_proj.hra_u"
    hra = {
        "r_0": (st_set(HU, "F32", [64, 0], b""), None, "q_proj"),
        "u_63": (st_set(HU, "F32", [63, 4], f32z(252)), None, "q_proj"),
        "u_rank_3": (st_set(HU, "F32", [64, 3], f32z(192)), None, ("q_proj", "rank", "r")),
        "u_zero": (st_set(HU, "F32", [64, 4], f32z(256, 0.0)), None, None),
        "u_nan": (st_set(HU, "F32", [64, 4], f32([NAN] * 256)), None, ("q_proj", "NaN", "finite")),
        "cfg_r_0": (None, lambda j: j.update(r=0), ("r", "rank")),
        "cfg_gs_string": (None, lambda j: j.update(apply_GS="no"), "apply_GS"),
    }
    for what, (fn, cfg, mention) in hra.items():
        _peft("hra_" + what, "hra", fn, cfg, mention)
    BR, BS = P + "self_attn.q_proj.boft_R", P + "self_attn.q_proj.boft_s"
    boft = {
        "block_5": (st_set(BR, "F32", [1, 12, 5, 5], f32z(300)), None, "q_proj"),
        "blocks_17": (st_set(BR, "F32", [1, 17, 4, 4], f32z(272)), None, "q_proj"),
        "r_not_square": (st_set(BR, "F32", [1, 16, 4, 3], f32z(192)), None, "q_proj"),
        "s_63": (st_set(BS, "F32", [63, 1], f32z(63, 1.0)), None, "q_proj"),
        "s_missing": (lambda t: t.pop(BS), None, "q_proj"),
        "r_nan": (st_set(BR, "F32", [1, 16, 4, 4], f32([NAN] * 256)), None, ("q_proj", "NaN", "finite")),
        "cfg_block_5": (None, lambda j: j.update(boft_block_size=5), ("boft_block_size", "q_proj")),
        "cfg_both": (None, lambda j: j.update(boft_block_num=16), ("boft_block", "q_proj")),
        # boft_n_butterfly_factor is not a contradiction: PEFT without CUDA sets it to 1 and loads.
    }
    for what, (fn, cfg, mention) in boft.items():
        _peft("boft_" + what, "boft", fn, cfg, mention)
    DL, DN, DA = P + "self_attn.q_proj.delora_lambda", P + "self_attn.q_proj.delora_w_norm", P + "self_attn.q_proj.delora_A"
    delora = {
        "lambda_nan": (st_set(DL, "F32", [1], f32([NAN])), None, ("q_proj", "NaN", "finite")),
        "lambda_inf": (st_set(DL, "F32", [1], f32([INF])), None, ("q_proj", "inf", "finite")),
        "lambda_2": (st_set(DL, "F32", [2], f32([1.0, 2.0])), None, "q_proj"),
        "lambda_missing": (lambda t: t.pop(DL), None, "q_proj"),
        "w_norm_63": (st_set(DN, "F32", [63], f32z(63, 1.0)), None, "q_proj"),
        "w_norm_nan": (st_set(DN, "F32", [64], f32([NAN] * 64)), None, ("q_proj", "NaN", "finite")),
        "w_norm_zero": (st_set(DN, "F32", [64], f32z(64, 0.0)), None, None),
        "a_rank_3": (st_set(DA, "F32", [3, 64], f32z(192)), None, "q_proj"),
        "a_zero_rows": (st_set(DA, "F32", [4, 64], f32z(256, 0.0)), None, None),
        "cfg_r_0": (None, lambda j: j.update(r=0), ("r", "rank")),
    }
    for what, (fn, cfg, mention) in delora.items():
        _peft("delora_" + what, "delora", fn, cfg, mention)
    LN = P + "input_layernorm.ln_tuning_layers.weight"
    ln = {
        "w_63": (st_set(LN, "F32", [63], f32z(63, 1.0)), None, "input_layernorm"),
        "w_nan": (st_set(LN, "F32", [64], f32([NAN] * 64)), None, ("input_layernorm", "NaN", "finite")),
        "w_2d": (st_set(LN, "F32", [64, 1], f32z(64, 1.0)), None, "input_layernorm"),
        "on_linear": (lambda t: t.__setitem__(P + "self_attn.q_proj.ln_tuning_layers.weight",
                                              ("F32", [64], f32z(64, 1.0))), None, "q_proj"),
    }
    for what, (fn, cfg, mention) in ln.items():
        _peft("ln_" + what, "ln_tuning", fn, cfg, mention)


# ---------------------------------------------------------------- diffusers Flux.2 LoKr
FL = "diffusion10/flux2_lokr/"
MF = ["merge", "--base", "b.safetensors", "--adapter", "a.safetensors", "--out", "o.safetensors"]


@case
def flux2_lokr_lies():
    for src in ("lycoris", "aitk", "bare"):
        p = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", FL,
                         src + ".safetensors")
        t, _ = st_tensors(p)
        mods = sorted({k.rsplit(".", 1)[0] for k in t if ".lokr_" in k})
        m = mods[0]
        short = m.split(".")[-1] if "." in m else m.rsplit("_", 1)[-1]
        keys = {k.rsplit(".", 1)[1]: k for k in t if k.startswith(m + ".")}

        def grow(leaf, d):
            def fn(t):
                k = keys[leaf]
                sh = list(t[k][1])
                sh[d] += 1
                n = 1
                for x in sh:
                    n *= x
                t[k] = ("F32", sh, f32z(n))
            return fn
        lies = {}
        for leaf in keys:
            if leaf == "alpha":
                lies["alpha_vec"] = (st_set(keys[leaf], "F32", [2], f32([1.0, 1.0])), True)
                lies["alpha_nan"] = (st_set(keys[leaf], "F32", [], f32([NAN])), True)
                lies["alpha_2d"] = (st_set(keys[leaf], "F32", [1, 1], f32([1.0])), None)
                lies["alpha_i64"] = (st_set(keys[leaf], "I64", [], struct.pack("<q", 4)), None)
                continue
            lies[f"{leaf}_missing"] = (lambda t, k=keys[leaf]: t.pop(k), True)
            lies[f"{leaf}_grown0"] = (grow(leaf, 0), True)
            lies[f"{leaf}_grown1"] = (grow(leaf, 1), True)
            lies[f"{leaf}_nan"] = (lambda t, k=keys[leaf]: t.__setitem__(k, ("F32", t[k][1],
                                                                             f32([NAN] * (len(t[k][2]) // 4)))), True)
        if "lokr_w1" in keys:
            lies["w1_and_w1_a"] = (lambda t: (t.__setitem__(m + ".lokr_w1_a", ("F32", [t[keys["lokr_w1"]][1][0], 1],
                                                                              f32z(t[keys["lokr_w1"]][1][0]))),
                                              t.__setitem__(m + ".lokr_w1_b", ("F32", [1, t[keys["lokr_w1"]][1][1]],
                                                                              f32z(t[keys["lokr_w1"]][1][1])))), True)
        lies["t2_orphan"] = (lambda t: t.__setitem__(m + ".lokr_t2", ("F32", [1, 1, 1, 1], f32([1.0]))), True)
        for what, (fn, refuse) in lies.items():
            c = Case(f"r11_lokr_{src}_{what}", (FL + "base.safetensors", "b.safetensors"),
                     (FL + src + ".safetensors", "a.safetensors"))
            st_edit(c.p("a.safetensors"), fn)
            if refuse:
                run(c, MF, mention=["a.safetensors", (short, m)])
            else:
                either(c, MF)
            either(c, ["inspect", "a.safetensors"])
            for target in ("diffusers", "comfy"):
                either(c, ["check", "a.safetensors", "--target", target], refusals=(1, 2))
            either(c, ["check", "a.safetensors", "--base", "b.safetensors"], refusals=(1, 2))
            either(c, ["convert", "a.safetensors", "--to", "peft", "--out", "conv"])


# ---------------------------------------------------------------- MLX-quantized bases
@case
def mlx_quant_base():
    W = "model.layers.1.self_attn.q_proj"

    def quant(scales_dt="F32", biases=True, scales=True, wdt="U32", wshape=(16, 2), sshape=(16, 1)):
        def fn(t):
            n = wshape[0] * wshape[1]
            t[W + ".weight"] = (wdt, list(wshape), b"\x11" * (4 * n))
            if scales:
                ns = sshape[0] * sshape[1]
                t[W + ".scales"] = (scales_dt, list(sshape), (f32z(ns, 0.1) if scales_dt == "F32" else
                                                             _f16([0.1] * ns) if scales_dt == "F16" else
                                                             b"\0" * (4 * ns)))
            if biases:
                ns = sshape[0] * sshape[1]
                t[W + ".biases"] = ("F32", list(sshape), f32z(ns, 0.0))
        return fn
    lies = {
        "plain": (quant(), None),
        "untouched_module": (lambda t: (quant()(t), [t.__setitem__(k.replace("layers.1", "layers.0"), t.pop(k))
                                                    for k in [k for k in t if k.startswith(W + ".")]]), "copied"),
        "scales_f16": (quant("F16"), None),
        "scales_i32": (quant("I32"), None),
        "no_biases": (quant(biases=False), "q_proj"),
        "no_scales": (quant(scales=False), "q_proj"),
        "weight_i8": (quant(wdt="I8", wshape=(16, 8)), "q_proj"),
        "lying_shape": (quant(wshape=(16, 3)), None),
        "scales_huge_groups": (quant(sshape=(16, 1000)), None),
        "weight_u32_alone": (quant(scales=False, biases=False), "q_proj"),
    }
    cfgs = {
        "cfg_bits_3": lambda j: j.update(quantization={"group_size": 64, "bits": 3}),
        "cfg_group_0": lambda j: j.update(quantization={"group_size": 0, "bits": 4}),
        "cfg_string": lambda j: j.update(quantization="4bit"),
    }
    for what, (fn, mention) in lies.items():
        c = Case(f"r11_mlxq_{what}", ("mlx/base", "base"), ("mlx/lora", "ad"))
        st_edit(c.p("base/model.safetensors"), fn)
        if mention == "copied":  # a block the adapter does not change: copied as stored
            either(c, MB)
        else:
            run(c, MB, mention=["base", "q_proj"] + ([mention] if mention else []))
        either(c, ["inspect", "base"])
        either(c, ["dequantize", "base", "--out", "dq"])
        either(c, ["check", "ad", "--base", "base"], refusals=(1, 2))
    for what, fn in cfgs.items():
        c = Case(f"r11_mlxq_{what}", ("mlx/base", "base"), ("mlx/lora", "ad"))
        st_edit(c.p("base/model.safetensors"), quant())
        c.json_edit("base/config.json", fn)
        run(c, MB, mention=["base", ("q_proj", "quantization", "config.json")])
        either(c, ["dequantize", "base", "--out", "dq"])


# ---------------------------------------------------------------- __metadata__ shapes
@case
def metadata_shapes():
    shapes = {
        "null": None, "list": ["format", "pt"], "string": "pt", "number": 1, "nested": {"format": {"pt": "x"}},
        "nested_list": {"ss_tags": ["a", "b"]}, "bool": {"format": True},
        "deep": {"a": json.loads("[" * 200 + "]" * 200)},
    }

    def set_meta(p, meta):
        h, data = st_read(p)
        h.pop("__metadata__", None)
        raw = json.dumps(dict({"__metadata__": meta}, **h)).encode()
        st_write(p, h, data, raw_header=raw)

    for what, meta in shapes.items():
        for role in ("adapter", "base", "mlx"):
            if role == "adapter":
                c = Case(f"r11_meta_{what}_{role}", (BASE, "base"), (QV, "ad"))
                set_meta(c.p("ad/adapter_model.safetensors"), meta)
                named = "adapter_model.safetensors"
            elif role == "base":
                c = Case(f"r11_meta_{what}_{role}", (BASE, "base"), (QV, "ad"))
                set_meta(c.p("base/model.safetensors"), meta)
                named = "model.safetensors"
            else:
                c = Case(f"r11_meta_{what}_{role}", ("mlx/base", "base"), ("mlx/lora", "ad"))
                set_meta(c.p("ad/adapters.safetensors"), meta)
                named = "adapters.safetensors"
            if what == "null":  # the safetensors crate reads `null` as no metadata
                either(c, MB)
            elif what == "deep":  # serde_json's recursion limit: "header is not valid JSON"
                run(c, MB, mention=[named])
            else:
                run(c, MB, mention=[named, "__metadata__"])
            either(c, ["inspect", "ad"])
            either(c, ["inspect", "base"])


# ---------------------------------------------------------------- regex dialects
@case
def regex_dialects():
    # Python's re refuses each (checked with re.compile, Python 3.11): PEFT raises at load.
    py_refuses = {
        "multiple_repeat": ".*_proj{1}{1}", "double_star": ".*_proj**", "lazy_then_plus": ".*_pro*?+j",
        "bad_escape_z": ".*_proj\\z", "bad_escape_p": ".*\\pL_proj", "named_angle": ".*(?<n>_)proj",
        "flag_U": "(?U).*_proj", "flag_minus_u": ".*(?-u:_)proj", "hex_brace": ".*\\x{5f}proj",
        "dot_1000_1000": ".{1000}{1000}", "big_multi": "(.*_proj){1,3}{2}", "flags_mid": ".*(?i)_PROJ",
        "flags_negated_global": "(?-i).*_proj",
    }
    for what, pat in py_refuses.items():
        c = Case(f"r11_re_pyrefuses_{what}", (BASE, "base"), (QV, "ad"))
        c.json_edit("ad/adapter_config.json", lambda j, pat=pat: j.update(target_modules=pat))
        t0 = time.time()
        run(c, MB, mention=["adapter_config.json", "target_modules"], timeout=60)
        if time.time() - t0 > 20:
            violation(c.name, "took more than 20 s", f"{time.time() - t0:.1f} s")
    # Python accepts, the regex crate does not: undecidable (every stored module), in seconds.
    rust_refuses = {
        "lookahead": "(?=.*q).*_proj", "lookbehind": ".*(?<=self_attn\\.)q_proj", "backref": ".*(q)_pro(j)|\\1",
        "possessive": ".*q_proj*+", "atomic": ".*(?>q_proj)", "huge_count": "(.*q_proj){1000}",
        "nested_counts": "((((.*q_proj){10}){10}){10}){10}",
    }
    for what, pat in rust_refuses.items():
        c = Case(f"r11_re_rustrefuses_{what}", (BASE, "base"), (QV, "ad"))
        c.json_edit("ad/adapter_config.json", lambda j, pat=pat: j.update(target_modules=pat))
        t0 = time.time()
        either(c, MB)
        if time.time() - t0 > 20:
            violation(c.name, "took more than 20 s", f"{time.time() - t0:.1f} s")
    big = {
        "layers_1e6": lambda j: j.update(layers_to_transform=list(range(10 ** 6))),
        "layers_neg": lambda j: j.update(layers_to_transform=[-1]),
        "layers_string": lambda j: j.update(layers_to_transform="0"),
        "layers_huge": lambda j: j.update(layers_to_transform=[2 ** 64]),
        "rank_pattern_2000": lambda j: j.update(rank_pattern={f"layers.{i}.q_proj": 8 for i in range(2000)}),
        "pattern_1e4_long": lambda j: j.update(target_modules="|".join(f"m{i}" for i in range(10 ** 4))),
    }
    for what, fn in big.items():
        c = Case(f"r11_re_{what}", (BASE, "base"), (QV, "ad"))
        c.json_edit("ad/adapter_config.json", fn)
        t0 = time.time()
        if what in ("layers_neg", "layers_string", "layers_huge"):
            run(c, MB, mention=["adapter_config.json", "layers_to_transform"])
        else:
            either(c, MB)
        if time.time() - t0 > 20:
            # Slow, not wrong (found here: every rank_pattern key is its own Regex, and each one's
            # first is_match builds its search cache: 1,000 keys 12.7 s, 10,000 keys 81 s, debug
            # build on the loaded machine). Counted apart.
            STATS["known"] = STATS.get("known", 0) + 1
            print(f"known: {c.name}: took {time.time() - t0:.1f} s")
