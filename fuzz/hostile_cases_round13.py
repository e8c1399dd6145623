"""Round-13 cases of fuzz/hostile_round.py: the code added in round 12's session (no hostile round
has seen it: `git log a4e09c7..48586ad`) and what rounds 11-12 left out.

Rounds 11-12 covered (their docstrings): mlx-lm adapter configs and tensors (rank, scale,
num_layers, keys, 3-D factors refused then), MLX *affine* bases whose config.json `quantization`
lies (bits/group_size/mode of every type, per-module entries) or whose scales/biases/packed
weights lie, adapters of the packed width, `check --base` on every quantized fixture, PEFT
VeRA/VB-LoRA/HRA/BOFT/DeLoRA/LN-tuning/MiSS/SHiRA/C3A/GraLoRA/RandLoRA lies, Flux.2 LoKr, the
diffusion11 layouts, `__metadata__` shapes, regex dialects and global flags. What they missed,
tried here:
  * mlx_fp_lies: MLX mxfp4 / nvfp4 / mxfp8 bases (fixtures/mlx_quant_fp): config `mode` with the
    wrong group_size/bits (and of other types), another mode than the stored scales fit, a
    per-module fp entry; U8 scales of the wrong shape or rank, scales as BF16/F32/I8, biases
    present, a `global_scale` (F32 scalar, [1]) beside nvfp4 and mxfp4 weights, E8M0 254/255,
    E4M3 0x7F/0xFF scales, mxfp8 NaN codes, packed widths that lie; through merge (keep and
    `--quant dequantize`), dequantize, inspect and `check --base`;
  * mlx_moe_lies: 3-D `QuantizedSwitchLinear` experts whose E or rows lie, scales of another
    rank, a 4-D weight, `LoRASwitchLinear` factors with mismatched E or r, rank 2 beside 3,
    transposed, NaN, more experts than the base, `num_layers`/`keys` lies, experts on the
    float (dequantized) base, and `--part I/N` + `finalize` (each part refused on a lie; on
    the honest pair, the finalized output equal byte for byte to the whole merge);
  * peft_gaps12_lies: RoAd `variant`/`group_size` of other values and types, group sizes that
    do not divide the width, theta/alpha shapes and NaN, a base bias of another length; OSF
    `effective_rank` / `rank_pattern` contradicting the stored n (PEFT builds U_low
    [out, min − effective_rank] and refuses other shapes), U/S/V shapes that lie; use_qalora
    with odd `qalora_group_size`; HRA/BOFT on Conv2d with wrong shapes;
  * expand_base_lies: `merge --expand-base` with a Flux control LoRA wider, equal, narrower, a
    lora_B of other rows, a base x_embedder already wider or not 2-D, config.json
    `in_channels` of the wrong type, missing, duplicated, negative, and no config.json; the flag
    on a base with no x_embedder, with --part and --unmerge, two adapters of two widths;
  * lokr_meta_lies: the diffusers-saved Z-Image LoKr file whose `lora_adapter_metadata` gives
    alpha/r of wrong types, NaN, zero, negative, r contradicting the stored factors, patterns;
    ERNIE-Image / Helios / SkyReels-V2 files with half pairs and NaN through `check`.

Results, 2026-12-07, debug build, as root. Against the binary of 48586ad (before this round's
fixes), this file's cases: 36 violated checks in 16 case folders, and a harness timeout that
stopped mlx_fp_lies after 302 of its cases (mlx_fp_lies 5 + the timeout, peft_gaps12_lies 18,
expand_base_lies 4, lokr_meta_lies 8; mlx_moe_lies 0 of 438). Fixed (tests in
tests/it/hostile13.rs, each failing on that binary):
  * an MLX weight of zero rows and 2^62 words (mxfp4 or affine): `words * 32` overflowed in
    the scan, a panic (exit 101) in merge, dequantize, inspect and check; now one line naming
    the weight (io/quant/mlx_scan.rs);
  * a zero-size MLX weight of 2^62 rows (`[2^62, 0]`, scales alike, a consistent base of no
    values): dequantize looped once per row, past the harness's 120 s (hours); now at once
    (io/quant/mod.rs `dequantize`);
  * PEFT OSF `effective_rank` / `rank_pattern` contradicting the stored triplets (8, 16, 0,
    -4, 1000, 0.25, "x", a pattern of 8, n = 40 stored): merged from the tensors where PEFT
    builds U_low [out, min − effective_rank] and refuses the file (peft/osf.rs; 17 configs
    checked against PeftModel.from_pretrained, all agree);
  * a diffusers-saved LoKr whose `lora_adapter_metadata` r (1, 3, a rank_pattern of 1, 3 with
    decompose_both) makes PEFT build a decomposed half where the file stores it whole: merged
    at alpha/r (r = 1: twice the scale) where diffusers' load leaves the factor unloaded
    (formats/kohya.rs; PEFT's layouts measured with get_peft_model);
  * `merge --expand-base` into a base whose config.json `in_channels` (16, or 8) is not
    x_embedder's 4 stored columns: wrote out_channels 16 beside a 4-row proj_out, exit 0
    (ops/merge/widen.rs; diffusers' from_pretrained refuses that base itself).
Accepted as valid (not counted), after reading the producer: f16 expert factors of the same
values (mlx-lm loads them); HRA/BOFT onto a conv1 stored flattened 2-D or 3-D (the same
[out, in·k] rotation on a Linear/Conv1d of that width: merged); a consistent zero-size MLX
weight (only the merges refuse); a global_scale beside an mxfp4/nvfp4 weight (not read: the
merges of that module and dequantize refuse, keep copies it on modules no adapter changes).
Not fixed (refusals of valid input, left): a config.json whose string *value* is
"in_channels" is refused by --expand-base's byte-level rewrite ("names in_channels more than
once"); OSF `rank_pattern` fractions (PEFT reads 0.25 as a quarter of min(out, in)) are
refused by the shared PEFT config parser ("not a positive integer", peft/config.rs).
On this round's final binary (44240ec): the five functions, 1,725 cases, 0 violations. The
whole round, all thirteen files, on 1ed6f74's binary (all fixes but widen.rs's): 12,353 cases,
0 violations, 0 skipped, 2,986 s.
"""
import json, os, struct, subprocess

from hostile_cases_round5 import INF, NAN, either, f32z, st_set
from hostile_lib import (BASE, LK, QV, Case, case, f32, run, run_ok, setup_only, st_build, st_edit, st_read,
                         st_tensors, st_write, violation)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = ["merge", "--base", "base", "--adapter", "ad", "--out", "o"]
MBD = MB + ["--quant", "dequantize"]
FP = "mlx_quant_fp/"


def _mention(m):
    return m if isinstance(m, tuple) else (m,)


def _fx(rel):
    return os.path.join(ROOT, "fixtures", rel)


def _bf16(vals):
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


def _cmds(c, refuse, mention, check=True, base="base", ad="ad"):
    """merge (keep and dequantize) and dequantize refuse naming `mention` (`refuse` True;
    "merge": only the merges; False: refuse cleanly or succeed); inspect and check --base must
    not panic."""
    mb = ["merge", "--base", base, "--adapter", ad, "--out", "o"]
    for argv in (mb, mb + ["--quant", "dequantize"], ["dequantize", base, "--out", "dq"]):
        if refuse is True or (refuse == "merge" and argv[0] == "merge"):
            run(c, argv, mention=[_mention(mention)])
        else:
            either(c, argv)
    either(c, ["inspect", base])
    if check:
        either(c, ["check", ad, "--base", base], refusals=(1, 2))


# ---------------------------------------------------------------- MLX floating-point modes
def _q(**kw):
    def fn(j):
        for top in ("quantization", "quantization_config"):
            for k, v in kw.items():
                if v is KeyError:
                    j[top].pop(k, None)
                else:
                    j[top][k] = v
    return fn


def _qmod(mod, v):
    def fn(j):
        for top in ("quantization", "quantization_config"):
            j[top][mod] = v
    return fn


QP0 = "model.layers.0.self_attn.q_proj"


@case
def mlx_fp_lies():
    CFG = ("config.json", "quantization")
    # (fixture, edit, refuse): mxfp4 32/4, nvfp4 16/4, mxfp8 32/8; mix: mxfp4 with q/k 8-bit affine.
    lies = {
        "mxfp4_gs_16": ("mxfp4", _q(group_size=16), True), "mxfp4_gs_64": ("mxfp4", _q(group_size=64), True),
        "mxfp4_gs_0": ("mxfp4", _q(group_size=0), True), "mxfp4_gs_str": ("mxfp4", _q(group_size="32"), True),
        "mxfp4_gs_float": ("mxfp4", _q(group_size=32.0), True), "mxfp4_gs_null": ("mxfp4", _q(group_size=None), True),
        "mxfp4_gs_missing": ("mxfp4", _q(group_size=KeyError), True),
        "mxfp4_gs_2p64_32": ("mxfp4", _q(group_size=2 ** 64 + 32), True),
        "mxfp4_bits_8": ("mxfp4", _q(bits=8), True), "mxfp4_bits_2p32_4": ("mxfp4", _q(bits=2 ** 32 + 4), True),
        "mxfp4_bits_neg": ("mxfp4", _q(bits=-4), True), "mxfp4_bits_missing": ("mxfp4", _q(bits=KeyError), True),
        "mxfp4_as_nvfp4": ("mxfp4", _q(mode="nvfp4", group_size=16), True),
        "mxfp4_as_mxfp8": ("mxfp4", _q(mode="mxfp8", bits=8), True),
        "mxfp4_as_affine": ("mxfp4", _q(mode="affine"), True),
        "mxfp4_mode_upper": ("mxfp4", _q(mode="MXFP4"), True), "mxfp4_mode_fp4": ("mxfp4", _q(mode="fp4"), True),
        "mxfp4_mode_list": ("mxfp4", _q(mode=["mxfp4"]), True),
        "nvfp4_gs_32": ("nvfp4_bf16", _q(group_size=32), True),
        "nvfp4_as_mxfp4": ("nvfp4_bf16", _q(mode="mxfp4", group_size=32), True),
        "nvfp4_bits_8": ("nvfp4_bf16", _q(bits=8), True),
        "mxfp8_bits_4": ("mxfp8_f16", _q(bits=4), True), "mxfp8_gs_16": ("mxfp8_f16", _q(group_size=16), True),
        "mxfp8_as_mxfp4": ("mxfp8_f16", _q(mode="mxfp4", bits=4), True),
        # mix_bf16: q_proj is affine 64/8 (per-module entry without a mode).
        "mix_mod_mxfp4": ("mix_bf16", _qmod(QP0, {"group_size": 64, "bits": 8, "mode": "mxfp4"}), True),
        "mix_mod_mode_only": ("mix_bf16", _qmod(QP0, {"mode": "mxfp8"}), True),
        "mix_mod_true": ("mix_bf16", _qmod(QP0, True), True),
        "mix_mod_affine_4": ("mix_bf16", _qmod(QP0, {"group_size": 64, "bits": 4}), True),
        "mix_mod_mode_null": ("mix_bf16", _qmod(QP0, {"group_size": 64, "bits": 8, "mode": None}), True),
        "mix_v_mod_affine": ("mix_bf16", _qmod("model.layers.0.self_attn.v_proj", {}), True),
        "mix_v_mod_mxfp4": ("mix_bf16", _qmod("model.layers.0.self_attn.v_proj", {"mode": "mxfp4"}), False),
        "mix_top_affine": ("mix_bf16", _q(mode="affine", group_size=32, bits=4), True),
    }
    for what, (fx, fn, refuse) in lies.items():
        c = Case(f"r13_mlxfpc_{what}", (FP + fx, "base"), (FP + "lora_" + fx, "ad"))
        c.json_edit("base/config.json", fn)
        _cmds(c, refuse, CFG + ("q_proj", "v_proj", "weight", "scales"))
    for fx in ("mxfp4", "nvfp4_bf16", "mxfp8_f16"):
        t0, _ = st_tensors(_fx(FP + fx + "/model.safetensors"))
        # A module the fixture's adapter changes (lora_mxfp8_f16 adapts layer 1 only).
        mod = QP0.replace("layers.0", "layers.1") if fx == "mxfp8_f16" else QP0
        W, S = mod + ".weight", mod + ".scales"
        wdt, wsh, wraw = t0[W]
        sdt, ssh, sraw = t0[S]
        rows, groups = ssh
        ns = rows * groups
        byte = {"mxfp4": (254, 255), "mxfp8_f16": (254, 255), "nvfp4_bf16": (0x7F, 0xFF)}[fx]
        lies = {
            "scales_bf16": (st_set(S, "BF16", ssh, _bf16([1.0] * ns)), True),
            "scales_f32": (st_set(S, "F32", ssh, f32([1.0] * ns)), True),
            "scales_i8": (st_set(S, "I8", ssh, sraw), True),
            "scales_f8": (st_set(S, "F8_E4M3", ssh, sraw), True),
            "scales_one_group_more": (st_set(S, "U8", [rows, groups + 1], sraw + sraw[:rows]), True),
            "scales_one_group_less": (st_set(S, "U8", [rows, groups - 1], sraw[:rows * (groups - 1)]), groups > 1),
            "scales_transposed": (st_set(S, "U8", [groups, rows], sraw), True),
            "scales_1d": (st_set(S, "U8", [ns], sraw), True),
            "scales_3d": (st_set(S, "U8", [1, rows, groups], sraw), True),
            "scales_half_rows": (st_set(S, "U8", [rows // 2, groups], sraw[:ns // 2]), True),
            "biases_u8": (st_set(mod + ".biases", "U8", ssh, b"\0" * ns), True),
            "biases_bf16": (st_set(mod + ".biases", "BF16", ssh, _bf16([0.0] * ns)), True),
            "global_scale_f32": (st_set(mod + ".global_scale", "F32", [], f32([1.0])), True),
            "global_scale_1": (st_set(mod + ".global_scale", "F32", [1], f32([1.0])), True),
            "global_scale_nan": (st_set(mod + ".global_scale", "F32", [], f32([NAN])), True),
            "scale_big": (st_set(S, "U8", ssh, bytes([byte[0]]) * ns), fx == "nvfp4_bf16"),
            "scale_nan_first": (st_set(S, "U8", ssh, bytes([byte[1]]) + sraw[1:]), True),
            "scale_nan_last": (st_set(S, "U8", ssh, sraw[:-1] + bytes([byte[1]])), True),
            "scale_zero": (st_set(S, "U8", ssh, b"\0" * ns), False),
            "weight_i32": (st_set(W, "I32", wsh, wraw), True),
            "weight_u8": (st_set(W, "U8", [wsh[0], wsh[1] * 4], wraw), True),
            "weight_one_word_less": (st_set(W, "U32", [wsh[0], wsh[1] - 1], wraw[:4 * wsh[0] * (wsh[1] - 1)]), True),
            "weight_one_word_more": (st_set(W, "U32", [wsh[0], wsh[1] + 1], wraw + b"\0" * (4 * wsh[0])), True),
            "weight_double_width": (st_set(W, "U32", [wsh[0], wsh[1] * 2], wraw + wraw), True),
            "weight_1d": (st_set(W, "U32", [wsh[0] * wsh[1]], wraw), True),
            "weight_3d": (st_set(W, "U32", [1, wsh[0], wsh[1]], wraw), True),
            "weight_half_rows": (st_set(W, "U32", [wsh[0] // 2, wsh[1]], wraw[:len(wraw) // 2]), True),
            "weight_zero_rows_huge_words": (lambda t: (st_set(W, "U32", [0, 2 ** 62], b"")(t),
                                                       st_set(S, "U8", [0, 2 ** 58], b"")(t)), True),
            # A consistent zero-size weight: only the merges (the adapter misses it) refuse.
            "weight_huge_rows_zero_words": (lambda t: (st_set(W, "U32", [2 ** 62, 0], b"")(t),
                                                       st_set(S, "U8", [2 ** 62, 0], b"")(t)), "merge"),
            "scales_missing_weight": (lambda t: t.pop(W), True),
        }
        if fx == "mxfp8_f16":
            lies["code_nan"] = (st_set(W, "U32", wsh, b"\x7f" + wraw[1:]), True)
            lies["code_neg_nan"] = (st_set(W, "U32", wsh, wraw[:-1] + b"\xff"), True)
        for what, (fn, refuse) in lies.items():
            c = Case(f"r13_mlxfpt_{fx}_{what}", (FP + fx, "base"), (FP + "lora_" + fx, "ad"))
            st_edit(c.p("base/model.safetensors"), fn)
            _cmds(c, refuse, ("q_proj",))
    # The same zero-size lies on affine and expert weights.
    for fx, w, sdt in (("mlx_quant/q4", QP0, "F16"), (FP + "moe_q4", SW + "gate_proj", "BF16"),
                       (FP + "moe_mxfp4", SW + "gate_proj", "U8")):
        for what, (wsh, ssh) in {"zero_rows_huge_words": ([0, 2 ** 62], [0, 2 ** 56]),
                                 "huge_rows_zero_words": ([2 ** 62, 0], [2 ** 62, 0]),
                                 "huge_experts_zero_words": ([2 ** 40, 2 ** 20, 0], [2 ** 40, 2 ** 20, 0])}.items():
            name = fx.split("/")[-1]
            c = Case(f"r13_mlxzero_{name}_{what}", (fx, "base"), (fx.replace(name, "lora_" + name), "ad"))

            def fn(t, w=w, wsh=wsh, ssh=ssh, sdt=sdt):
                t[w + ".weight"] = ("U32", wsh, b"")
                t[w + ".scales"] = (sdt, ssh, b"")
                if w + ".biases" in t:
                    t[w + ".biases"] = (sdt, ssh, b"")
            st_edit(c.p("base/model.safetensors"), fn)
            _cmds(c, "merge" if what != "zero_rows_huge_words" else True, (w.split(".")[-1],))
    # A global_scale on a module no adapter changes (lm_head): keep copies it as stored, the
    # dequantizing commands must refuse naming it.
    c = Case("r13_mlxfpt_nvfp4_global_on_lm_head", (FP + "nvfp4_bf16", "base"), (FP + "lora_nvfp4_bf16", "ad"))
    st_edit(c.p("base/model.safetensors"), st_set("lm_head.global_scale", "F32", [], f32([2.0])))
    either(c, MB)
    run(c, MBD, mention=["lm_head"])
    run(c, ["dequantize", "base", "--out", "dq"], mention=["lm_head"])
    either(c, ["inspect", "base"])


# ---------------------------------------------------------------- MLX mixture of experts
SW = "model.layers.0.block_sparse_moe.switch_mlp."


@case
def mlx_moe_lies():
    for fx in ("moe_mxfp4", "moe_q4"):
        t0, _ = st_tensors(_fx(FP + fx + "/model.safetensors"))
        G = SW + "gate_proj"
        wdt, wsh, wraw = t0[G + ".weight"]
        sdt, ssh, sraw = t0[G + ".scales"]
        has_b = G + ".biases" in t0
        E, rows, words = wsh
        half = len(wraw) // 2

        def both(shape_w, raw_w, shape_s, raw_s):
            def fn(t):
                t[G + ".weight"] = ("U32", shape_w, raw_w)
                t[G + ".scales"] = (sdt, shape_s, raw_s)
                if has_b:
                    b = t[G + ".biases"][2]
                    t[G + ".biases"] = (sdt, shape_s, (b * 2)[:len(raw_s)])
            return fn

        base_lies = {
            "w_three_experts": (st_set(G + ".weight", "U32", [3, rows, words], wraw + wraw[:half]), True),
            "w_one_expert": (st_set(G + ".weight", "U32", [1, rows, words], wraw[:half]), True),
            "w_rows_lie": (st_set(G + ".weight", "U32", [E, rows * 2, words // 2], wraw), True),
            "w_flattened": (st_set(G + ".weight", "U32", [E * rows, words], wraw), True),
            "w_4d": (st_set(G + ".weight", "U32", [1, E, rows, words], wraw), True),
            "s_rank_2": (st_set(G + ".scales", sdt, [E * rows, ssh[2]], sraw), True),
            "s_rank_4": (st_set(G + ".scales", sdt, [1] + list(ssh), sraw), True),
            "s_experts_swapped": (st_set(G + ".scales", sdt, [ssh[1], ssh[0], ssh[2]], sraw), True),
            "all_one_expert": (both([1, rows, words], wraw[:half], [1, rows, ssh[2]], sraw[:len(sraw) // 2]), "merge"),
            "all_three_experts": (both([3, rows, words], wraw + wraw[:half], [3, rows, ssh[2]],
                                       sraw + sraw[:len(sraw) // 2]), "merge"),
            "all_4d": (both([1, E, rows, words], wraw, [1, E, rows, ssh[2]], sraw), "merge"),
            "global_scale": (st_set(G + ".global_scale", "F32", [E], f32([1.0] * E)), True),
        }
        for what, (fn, refuse) in base_lies.items():
            c = Case(f"r13_moeb_{fx}_{what}", (FP + fx, "base"), (FP + "lora_" + fx, "ad"))
            st_edit(c.p("base/model.safetensors"), fn)
            _cmds(c, refuse, ("gate_proj",))
        A, B = G + ".lora_a", G + ".lora_b"
        ta, _ = st_tensors(_fx(FP + "lora_" + fx + "/adapters.safetensors"))
        adt, ash, araw = ta[A]
        bdt, bsh, braw = ta[B]
        e_, r_, in_ = ash
        _, out_, _ = bsh
        ad_lies = {
            "a_three_experts": st_set(A, "F32", [3, r_, in_], araw + araw[:len(araw) // 2]),
            "both_three_experts": lambda t: (st_set(A, "F32", [3, r_, in_], araw + araw[:len(araw) // 2])(t),
                                             st_set(B, "F32", [3, out_, r_], braw + braw[:len(braw) // 2])(t)),
            "both_one_expert": lambda t: (st_set(A, "F32", [1, r_, in_], araw[:len(araw) // 2])(t),
                                          st_set(B, "F32", [1, out_, r_], braw[:len(braw) // 2])(t)),
            "a_rank_8": st_set(A, "F32", [e_, 8, in_], araw + araw),
            "both_rank_8": lambda t: (st_set(A, "F32", [e_, 8, in_], araw + araw)(t),
                                      st_set(B, "F32", [e_, out_, 8], braw + braw)(t)),
            "a_2d": st_set(A, "F32", [e_ * r_, in_], araw),
            "b_2d": st_set(B, "F32", [e_ * out_, r_], braw),
            "a_transposed": st_set(A, "F32", [e_, in_, r_], araw),
            "b_transposed": st_set(B, "F32", [e_, r_, out_], braw),
            "both_transposed": lambda t: (st_set(A, "F32", [e_, in_, r_], araw)(t),
                                          st_set(B, "F32", [e_, r_, out_], braw)(t)),
            "a_4d": st_set(A, "F32", [1, e_, r_, in_], araw),
            "a_in_wide": st_set(A, "F32", [e_, r_, in_ * 2], araw + araw),
            "b_out_wide": st_set(B, "F32", [e_, out_ * 2, r_], braw + braw),
            "a_nan": st_set(A, "F32", ash, f32([NAN]) + araw[4:]),
            "b_inf": st_set(B, "F32", bsh, braw[:-4] + f32([INF])),
            "a_zero_experts": lambda t: (st_set(A, "F32", [0, r_, in_], b"")(t), st_set(B, "F32", [0, out_, r_], b"")(t)),
            "a_missing": lambda t: t.pop(A),
            "a_f16": st_set(A, "F16", ash, struct.pack("<%de" % (len(araw) // 4), *struct.unpack("<%df" % (len(araw) // 4), araw))),
            "a_i32": st_set(A, "I32", ash, araw),
            "expert_m": st_set(G + ".m", "F32", [e_, out_], f32z(e_ * out_)),
            "onto_q_proj_3d": lambda t: (st_set("model.layers.0.self_attn.q_proj.lora_a", "F32", [2, 4, 64], f32z(512))(t),
                                         st_set("model.layers.0.self_attn.q_proj.lora_b", "F32", [2, 64, 4], f32z(512))(t)),
            "onto_router": lambda t: (st_set("model.layers.0.block_sparse_moe.gate.lora_a", "F32", [2, 4, 64], f32z(512))(t),
                                      st_set("model.layers.0.block_sparse_moe.gate.lora_b", "F32", [2, 2, 4], f32z(16))(t)),
            "layer_1": lambda t: [t.__setitem__(k.replace("layers.0", "layers.1"), t.pop(k)) for k in list(t) if G in k],
        }
        for what, fn in ad_lies.items():
            c = Case(f"r13_moea_{fx}_{what}", (FP + fx, "base"), (FP + "lora_" + fx, "ad"))
            st_edit(c.p("ad/adapters.safetensors"), fn)
            mention = ("gate_proj", "gate", "q_proj", "layers.1") if what.startswith(("onto", "layer")) else ("gate_proj",)
            if what == "onto_router":
                mention = ("gate",)
            for argv in (MB, MBD):
                if what == "a_f16":  # f16 factors of the same values: mlx-lm loads them alike
                    either(c, argv)
                else:
                    run(c, argv, mention=["ad", mention])
            either(c, ["check", "ad", "--base", "base"], refusals=(1, 2))
            either(c, ["inspect", "ad"])
            either(c, ["convert", "ad", "--to", "peft", "--out", "conv"])
        cfg_lies = {
            "keys_no_switch": lambda j: j["lora_parameters"].update(keys=["self_attn.q_proj", "self_attn.v_proj"]),
            "keys_switch_only": lambda j: j["lora_parameters"].update(keys=["block_sparse_moe.switch_mlp.gate_proj"]),
            "rank_8": lambda j: j["lora_parameters"].update(rank=8),
            "rank_2": lambda j: j["lora_parameters"].update(rank=2),
            "num_layers_0": lambda j: j.update(num_layers=0),
            "num_layers_2": lambda j: j.update(num_layers=2),
            "num_layers_neg": lambda j: j.update(num_layers=-1),
            "dora": lambda j: j.update(fine_tune_type="dora"),
            "full": lambda j: j.update(fine_tune_type="full"),
        }
        refuse = {"keys_no_switch", "keys_switch_only", "rank_8", "rank_2", "dora"}
        for what, fn in cfg_lies.items():
            c = Case(f"r13_moec_{fx}_{what}", (FP + fx, "base"), (FP + "lora_" + fx, "ad"))
            c.json_edit("ad/adapter_config.json", fn)
            for argv in (MB, MBD):
                if what in refuse:
                    run(c, argv, mention=["ad"])
                else:
                    either(c, argv)
            either(c, ["inspect", "ad"])
        # Experts on the float (dequantized) base: merged, or refused cleanly; with a lie refused.
        c = Case(f"r13_moef_{fx}_float_base", (FP + f"fused_{fx}_deq.safetensors", "b.safetensors"),
                 (FP + "lora_" + fx, "ad"))
        either(c, ["merge", "--base", "b.safetensors", "--adapter", "ad", "--out", "o.safetensors"])
        either(c, ["check", "ad", "--base", "b.safetensors"], refusals=(1, 2))
        st_edit(c.p("ad/adapters.safetensors"), ad_lies["both_three_experts"])
        run(c, ["merge", "--base", "b.safetensors", "--adapter", "ad", "--out", "o.safetensors"],
            mention=["ad", "gate_proj"])
        # --part I/N + finalize: each part refuses a lie; the honest split equals the whole merge.
        for quant in ([], ["--quant", "dequantize"]):
            tag = "deq" if quant else "keep"
            c = Case(f"r13_moep_{fx}_{tag}", (FP + fx, "base"), (FP + "lora_" + fx, "ad"))
            run_ok(c, MB + quant + ["--quiet"])
            for i in (1, 2, 3):
                run_ok(c, ["merge", "--base", "base", "--adapter", "ad", "--out", "parts", "--part", f"{i}/3",
                           "--quiet"] + quant)
            run_ok(c, ["finalize", "parts", "--quiet"])
            whole, split = {}, {}
            for folder, into in (("o", whole), ("parts", split)):
                for n in sorted(os.listdir(c.p(folder))):
                    if n.endswith(".safetensors"):
                        into.update(st_tensors(c.p(folder, n))[0])
            if whole != split:
                diff = sorted(k for k in set(whole) | set(split) if whole.get(k) != split.get(k))
                violation(c.name, "the finalized parts differ from the whole merge", str(diff)[:400])
            c2 = Case(f"r13_moep_{fx}_{tag}_lie", (FP + fx, "base"), (FP + "lora_" + fx, "ad"))
            st_edit(c2.p("ad/adapters.safetensors"), ad_lies["both_three_experts"])
            for i in (1, 2):
                run(c2, ["merge", "--base", "base", "--adapter", "ad", "--out", "parts", "--part", f"{i}/2"] + quant,
                    mention=["ad", "gate_proj"])


# ---------------------------------------------------------------- PEFT tuners of gaps12
G12 = "gaps12/"
P = "base_model.model.model.layers.0."


def _peft(name, fixture, base, fn=None, cfg=None, mention=None, base_fn=None):
    c = Case(f"r13_tuner_{name}", (base, "base"), (G12 + fixture + "/adapter", "ad"))
    if fn is not None:
        st_edit(c.p("ad/adapter_model.safetensors"), fn)
    if cfg is not None:
        c.json_edit("ad/adapter_config.json", cfg)
    if base_fn is not None:
        st_edit(c.p("base/model.safetensors"), base_fn)
    if mention is None:
        either(c, MB)
    else:
        run(c, MB, mention=["ad" if base_fn is None else "base", _mention(mention)])
    either(c, ["inspect", "ad"])
    either(c, ["check", "ad", "--base", "base"], refusals=(1, 2))
    either(c, ["convert", "ad", "--to", "peft", "--out", "conv"])


@case
def peft_gaps12_lies():
    LB = "llama/base_attn_bias"
    QT, QAL = P + "self_attn.q_proj.road_theta", P + "self_attn.q_proj.road_alpha"
    road = {
        "variant_road_8": (None, lambda j: j.update(variant="road_8"), "variant"),
        "variant_int": (None, lambda j: j.update(variant=1), "variant"),
        "variant_upper": (None, lambda j: j.update(variant="ROAD_1"), "variant"),
        "variant_road_2": (None, lambda j: j.update(variant="road_2"), ("q_proj", "v_proj", "down_proj")),
        "variant_road_4": (None, lambda j: j.update(variant="road_4"), ("q_proj", "v_proj", "down_proj")),
        "group_0": (None, lambda j: j.update(group_size=0), "group_size"),
        "group_3": (None, lambda j: j.update(group_size=3), "group_size"),
        "group_neg": (None, lambda j: j.update(group_size=-8), "group_size"),
        "group_str": (None, lambda j: j.update(group_size="8"), "group_size"),
        "group_float": (None, lambda j: j.update(group_size=8.0), "group_size"),
        "group_2p64": (None, lambda j: j.update(group_size=2 ** 64), "group_size"),
        "group_12": (None, lambda j: j.update(group_size=12), ("q_proj", "v_proj", "down_proj", "group")),
        "group_128": (None, lambda j: j.update(group_size=128), ("q_proj", "v_proj", "down_proj", "group")),
        "group_null": (None, lambda j: j.update(group_size=None), ("q_proj", "v_proj", "down_proj", "group")),
        "theta_2d": (st_set(QT, "F32", [4, 8], f32z(32)), None, "q_proj"),
        "theta_short": (st_set(QT, "F32", [31], f32z(31)), None, "q_proj"),
        "theta_long": (st_set(QT, "F32", [64], f32z(64)), None, "q_proj"),
        "both_long": (lambda t: (st_set(QT, "F32", [64], f32z(64))(t), st_set(QAL, "F32", [64], f32z(64))(t)), None,
                      "q_proj"),
        "theta_empty": (lambda t: (st_set(QT, "F32", [0], b"")(t), st_set(QAL, "F32", [0], b"")(t)), None, "q_proj"),
        "theta_nan": (st_set(QT, "F32", [32], f32([NAN] + [0.1] * 31)), None, "q_proj"),
        "alpha_inf": (st_set(QAL, "F32", [32], f32([INF] + [1.0] * 31)), None, "q_proj"),
        "alpha_missing": (lambda t: t.pop(QAL), None, "q_proj"),
        "theta_i32": (st_set(QT, "I32", [32], b"\0" * 128), None, "q_proj"),
        "theta_f16": (st_set(QT, "F16", [32], b"\0" * 64), None, None),
        "orphan": (st_set(P + "self_attn.k_proj.road_gamma", "F32", [32], f32z(32)), None, "road_gamma"),
    }
    for what, (fn, cfg, mention) in road.items():
        _peft("road_" + what, "road1", LB, fn, cfg, mention)
    base_bias = {
        "bias_63": (st_set("model.layers.0.self_attn.q_proj.bias", "F32", [63], f32z(63)), "q_proj"),
        "bias_2d": (st_set("model.layers.0.self_attn.q_proj.bias", "F32", [64, 1], f32z(64)), None),
        "bias_nan": (st_set("model.layers.0.self_attn.q_proj.bias", "F32", [64], f32([NAN] * 64)), "q_proj"),
        "bias_missing": (lambda t: t.pop("model.layers.0.self_attn.q_proj.bias"), None),
        "bias_i32": (st_set("model.layers.0.self_attn.q_proj.bias", "I32", [64], b"\0" * 256), "q_proj"),
    }
    for what, (fn, mention) in base_bias.items():
        for fx in ("road1", "road4"):
            _peft(f"{fx}_base_{what}", fx, LB, base_fn=fn, mention=mention)
    US, SS, VS = (P + "self_attn.q_proj.osf_svd_params." + x for x in ("U_low", "S_low", "V_low"))
    osf = {
        "eff_8": (None, lambda j: j.update(effective_rank=8), ("effective_rank", "q_proj")),
        "eff_16": (None, lambda j: j.update(effective_rank=16), ("effective_rank", "q_proj", "v_proj")),
        "eff_0": (None, lambda j: j.update(effective_rank=0), "effective_rank"),
        "eff_neg": (None, lambda j: j.update(effective_rank=-4), "effective_rank"),
        "eff_big": (None, lambda j: j.update(effective_rank=1000), "effective_rank"),
        "eff_frac_quarter": (None, lambda j: j.update(effective_rank=0.25), ("effective_rank", "q_proj")),
        "eff_frac_half": (None, lambda j: j.update(effective_rank=0.5), None),
        "eff_str": (None, lambda j: j.update(effective_rank="x"), "effective_rank"),
        "pattern_q_8": (None, lambda j: j.update(rank_pattern={"q_proj": 8}), ("rank_pattern", "effective_rank", "q_proj")),
        "pattern_q_32": (None, lambda j: j.update(rank_pattern={"q_proj": 32}), None),
        "u_cols_33": (st_set(US, "F32", [64, 33], f32z(64 * 33)), None, "q_proj"),
        "all_n_40": (lambda t: (st_set(US, "F32", [64, 40], f32z(2560))(t), st_set(SS, "F32", [40], f32z(40))(t),
                                st_set(VS, "F32", [40, 64], f32z(2560))(t)), None, ("q_proj", "effective_rank")),
        "all_n_64": (lambda t: (st_set(US, "F32", [64, 64], f32z(4096))(t), st_set(SS, "F32", [64], f32z(64))(t),
                                st_set(VS, "F32", [64, 64], f32z(4096))(t)), None, "q_proj"),
        "s_2d": (st_set(SS, "F32", [32, 1], f32z(32)), None, "q_proj"),
        "v_transposed": (st_set(VS, "F32", [64, 32], f32z(2048)), None, "q_proj"),
        "s_missing": (lambda t: t.pop(SS), None, "q_proj"),
        "s_nan": (st_set(SS, "F32", [32], f32([NAN] + [1.0] * 31)), None, "q_proj"),
        "u_rows_65": (st_set(US, "F32", [65, 32], f32z(65 * 32)), None, "q_proj"),
    }
    for what, (fn, cfg, mention) in osf.items():
        _peft("osf_" + what, "osf", BASE, fn, cfg, mention)
    qal = {
        "group_0": lambda j: j.update(qalora_group_size=0),
        "group_neg": lambda j: j.update(qalora_group_size=-16),
        "group_str": lambda j: j.update(qalora_group_size="16"),
        "group_7": lambda j: j.update(qalora_group_size=7),
        "use_str": lambda j: j.update(use_qalora="yes"),
        "use_null": lambda j: j.update(use_qalora=None),
    }
    for what, cfg in qal.items():
        _peft("qalora_" + what, "qalora_float", BASE, cfg=cfg)
    HU = "base_model.model.conv1.hra_u"
    BR, BS = "base_model.model.conv1.boft_R", "base_model.model.conv1.boft_s"
    conv = {
        "hra_u_35": ("hra_conv", st_set(HU, "F32", [35, 2], f32z(70)), None, "conv1"),
        "hra_u_r3": ("hra_conv", st_set(HU, "F32", [36, 3], f32z(108)), None, "conv1"),
        "hra_u_3d": ("hra_conv", st_set(HU, "F32", [4, 9, 2], f32z(72)), None, "conv1"),
        "hra_u_nan": ("hra_conv", st_set(HU, "F32", [36, 2], f32([NAN] * 72)), None, "conv1"),
        "hra_r_3": ("hra_conv", None, lambda j: j.update(r=3), ("r", "conv1")),
        "boft_R_rect": ("boft_conv", st_set(BR, "F32", [1, 9, 4, 3], f32z(108)), None, "conv1"),
        "boft_R_blocks_8": ("boft_conv", st_set(BR, "F32", [1, 8, 4, 4], f32z(128)), None, "conv1"),
        "boft_s_7": ("boft_conv", st_set(BS, "F32", [1, 7], f32z(7)), None, "conv1"),
        "boft_s_flat": ("boft_conv", st_set(BS, "F32", [8], f32z(8)), None, "conv1"),
        "boft_block_3": ("boft_conv", None, lambda j: j.update(boft_block_size=3), ("boft_block", "conv1")),
        "boft_R_nan": ("boft_conv", st_set(BR, "F32", [1, 9, 4, 4], f32([NAN] * 144)), None, "conv1"),
    }
    for what, (fx, fn, cfg, mention) in conv.items():
        _peft("conv_" + what, fx, "conv/base", fn, cfg, mention)
    # The conv base's conv1 of another shape: the rotation does not fit.
    t0, _ = st_tensors(_fx("conv/base/model.safetensors"))
    cdt, csh, craw = t0["conv1.weight"]
    n = len(craw) // 4
    for fx in ("hra_conv", "boft_conv"):
        # flat / 3d: the same [out, in·kh·kw] rotation on a Linear (or Conv1d) of that width, a
        # consistent base of another module type: merged or refused, never wrong-shaped.
        for what, (sh, mention) in {"flat": ([csh[0], n // csh[0]], None),
                                    "3d": ([csh[0], csh[1], n // (csh[0] * csh[1])], None),
                                    "out_swapped": ([csh[1], csh[0]] + csh[2:], ("conv1",))}.items():
            if 0 in sh:
                continue
            _peft(f"conv_{fx}_base_{what}", fx, "conv/base", base_fn=st_set("conv1.weight", cdt, sh, craw),
                  mention=mention)


# ---------------------------------------------------------------- merge --expand-base
FC = "diffusion12/flux_control/"
XA, XB = "transformer.x_embedder.lora_A.weight", "transformer.x_embedder.lora_B.weight"
BF = "base/diffusion_pytorch_model.safetensors"


@case
def expand_base_lies():
    ME = ["merge", "--base", "base", "--adapter", "a.safetensors", "--out", "o", "--expand-base"]

    def fc(name):
        return Case(f"r13_expand_{name}", (FC + "base", "base"), (FC + "diffusers.safetensors", "a.safetensors"))

    ad_lies = {
        "a_cols_12": (st_set(XA, "F32", [2, 12], f32z(24)), False),
        "a_cols_5": (st_set(XA, "F32", [2, 5], f32z(10)), False),
        "a_cols_4": (st_set(XA, "F32", [2, 4], f32z(8)), False),
        "a_cols_3": (st_set(XA, "F32", [2, 3], f32z(6)), True),
        "a_cols_65536": (st_set(XA, "F32", [1, 65536], f32z(65536)), True),  # rank 1 beside B's 2
        "both_65536": (lambda t: (st_set(XA, "F32", [2, 65536], f32z(131072))(t)), False),
        "b_rows_17": (st_set(XB, "F32", [17, 2], f32z(34)), True),
        "b_rows_8": (st_set(XB, "F32", [8, 2], f32z(16)), True),
        "a_3d": (st_set(XA, "F32", [2, 8, 1], f32z(16)), True),
        "a_nan": (st_set(XA, "F32", [2, 8], f32([NAN] * 16)), True),
        "a_f16_inf": (st_set(XA, "F16", [2, 8], struct.pack("<16e", *([INF] * 16))), True),
        "proj_out_a_wide": (st_set("transformer.proj_out.lora_A.weight", "F32", [2, 20], f32z(40)), False),
    }
    for what, (fn, refuse) in ad_lies.items():
        c = fc("ad_" + what)
        st_edit(c.p("a.safetensors"), fn)
        if refuse:
            run(c, ME, mention=["x_embedder" if "proj_out" not in what else "proj_out"])
        else:
            either(c, ME)
        either(c, ["check", "a.safetensors", "--base", "base"], refusals=(1, 2))
    cfg_lies = {
        "in_str": lambda j: j.update(in_channels="4"), "in_float": lambda j: j.update(in_channels=4.0),
        "in_neg": lambda j: j.update(in_channels=-4), "in_null": lambda j: j.update(in_channels=None),
        "in_missing": lambda j: j.pop("in_channels"), "in_true": lambda j: j.update(in_channels=True),
        "in_list": lambda j: j.update(in_channels=[4]), "in_huge": lambda j: j.update(in_channels=2 ** 64),
        "in_nested": lambda j: (j.pop("in_channels"), j.update(sub={"in_channels": 4})),
        # in_channels other than x_embedder's stored 4 columns: the base does not load as it is;
        # before round 13 the widening wrote out_channels 16 beside a 4-row proj_out (exit 0).
        "in_lie_16": lambda j: j.update(in_channels=16), "in_lie_8": lambda j: j.update(in_channels=8),
        "out_str": lambda j: j.update(out_channels="4"),
        "out_missing": lambda j: j.pop("out_channels"),
        "list": lambda j: [j],
    }
    refuse = {"in_str", "in_float", "in_neg", "in_null", "in_missing", "in_true", "in_list", "in_huge", "in_nested",
              "list", "in_lie_16", "in_lie_8"}
    for what, fn in cfg_lies.items():
        c = fc("cfg_" + what)
        c.json_edit("base/config.json", fn)
        if what in refuse:
            run(c, ME, mention=[("config.json",)])
        else:
            either(c, ME)
    raw = {
        "dup_in": b'{"_class_name": "FluxTransformer2DModel", "in_channels": 4, "in_channels": 4, "out_channels": null}',
        "in_value_string_key": b'{"note": "in_channels", "in_channels": 4, "out_channels": null}',
        "not_json": b'{"in_channels": 4,',
        "empty": b"",
        "escaped_key": b'{"in\\u005fchannels": 4, "out_channels": null}',
        "in_exp": b'{"in_channels": 4e0, "out_channels": null}',
        "bom": b'\xef\xbb\xbf{"in_channels": 4, "out_channels": null}',
        "nan_elsewhere": b'{"in_channels": 4, "out_channels": null, "x": NaN}',
    }
    for what, text in raw.items():
        c = fc("raw_" + what)
        full = json.load(open(_fx(FC + "base/config.json")))
        if what in ("dup_in", "in_value_string_key", "escaped_key", "in_exp"):
            d = json.loads(text.decode())
            for k, v in full.items():
                if k not in ("in_channels", "out_channels") and k not in d:
                    d[k] = v
            body = json.dumps({k: v for k, v in d.items() if k != "in_channels"})[1:-1]
            text = text[:-1] + b", " + body.encode() + b"}"
        c.write("base/config.json", text)
        if what == "in_value_string_key":
            either(c, ME)  # a valid config whose string value spells the key
        else:
            run(c, ME, mention=[("config.json",)])
    c = fc("no_config")
    os.remove(c.p("base/config.json"))
    either(c, ME)
    # The base's x_embedder already wider (a Flux Fill/Depth model): equal width merges, wider stays.
    t0, _ = st_tensors(_fx(FC + BF))
    xdt, xsh, xraw = t0["x_embedder.weight"]
    rows, cols = xsh

    def widen(n):
        return st_set("x_embedder.weight", xdt, [rows, n],
                      b"".join(xraw[r * cols * 4:(r + 1) * cols * 4] + b"\0" * 4 * (n - cols) for r in range(rows)))

    for what, (fn, refuse) in {"base_8": (widen(8), False), "base_12": (widen(12), True),
                               "base_1d": (st_set("x_embedder.weight", xdt, [rows * cols], xraw), True),
                               "base_3d": (st_set("x_embedder.weight", xdt, [rows, cols, 1], xraw), True),
                               "base_bf16": (st_set("x_embedder.weight", "BF16", [rows, cols],
                                                    _bf16(list(struct.unpack("<%df" % (rows * cols), xraw)))), False),
                               "base_i32": (st_set("x_embedder.weight", "I32", [rows, cols], xraw), True),
                               "base_missing": (lambda t: t.pop("x_embedder.weight"), True)}.items():
        c = fc("base_" + what)
        st_edit(c.p(BF), fn)
        if refuse:
            run(c, ME, mention=["x_embedder"])
        else:
            either(c, ME)
    # The flag where nothing needs widening, with --part / --unmerge, and two widths.
    c = Case("r13_expand_llama", (BASE, "base"), (QV, "ad"))
    either(c, MB + ["--expand-base"])
    c = fc("with_part")
    run(c, ME + ["--part", "1/2"], mention=[("expand-base", "part")], rc=(2,))
    c = fc("with_unmerge")
    run(c, ME + ["--unmerge"], mention=[("expand-base", "unmerge")], rc=(2,))
    c = fc("two_widths")
    c.copy(FC + "diffusers.safetensors", "b.safetensors")
    st_edit(c.p("b.safetensors"), st_set(XA, "F32", [2, 12], f32z(24)))
    run(c, ME + ["--adapter", "b.safetensors"], mention=["x_embedder"])
    c = fc("onto_base_file")
    run(c, ["merge", "--base", "base", "--adapter", "a.safetensors", "--out", "base", "--expand-base"], rc=(2,))


# ---------------------------------------------------------------- diffusers-saved LoKr metadata
ZI = "diffusion12/z_image_lokr/"


@case
def lokr_meta_lies():
    MF = ["merge", "--base", "b.safetensors", "--adapter", "a.safetensors", "--out", "o.safetensors"]

    def meta_edit(fn=None, raw=None):
        def edit(p):
            h, data = st_read(p)
            m = h["__metadata__"]
            if raw is not None:
                m["lora_adapter_metadata"] = raw
            else:
                d = json.loads(m["lora_adapter_metadata"])
                r = fn(d)
                m["lora_adapter_metadata"] = json.dumps(d if r is None else r)
            st_write(p, h, data)
        return edit

    T = "transformer."
    lies = {
        "alpha_str": (meta_edit(lambda d: d.update({T + "alpha": "2"})), True),
        "alpha_null": (meta_edit(lambda d: d.update({T + "alpha": None})), True),
        "alpha_list": (meta_edit(lambda d: d.update({T + "alpha": [2]})), True),
        "alpha_nan": (meta_edit(raw='{"transformer.alpha": NaN, "transformer.r": 4, "transformer.peft_type": "LOKR"}'),
                      True),
        "alpha_inf": (meta_edit(raw='{"transformer.alpha": Infinity, "transformer.r": 4, "transformer.peft_type": "LOKR"}'),
                      True),
        "alpha_1e300": (meta_edit(lambda d: d.update({T + "alpha": 1e300})), True),
        "alpha_0": (meta_edit(lambda d: d.update({T + "alpha": 0})), False),
        "alpha_neg": (meta_edit(lambda d: d.update({T + "alpha": -2})), False),
        "r_0": (meta_edit(lambda d: d.update({T + "r": 0})), True),
        "r_neg": (meta_edit(lambda d: d.update({T + "r": -4})), True),
        "r_str": (meta_edit(lambda d: d.update({T + "r": "4"})), True),
        "r_float": (meta_edit(lambda d: d.update({T + "r": 4.5})), True),
        "r_huge": (meta_edit(lambda d: d.update({T + "r": 2 ** 64})), True),
        # PEFT's LoKr at r < max(w2's sides)/2 builds lokr_w2_a/_b: the file's whole lokr_w2 does
        # not load (PEFT 0.21.2 get_peft_model, measured: r 1-3 decompose w2 of [8, 4] or [4, 7]).
        "r_1": (meta_edit(lambda d: d.update({T + "r": 1})), True),
        "r_3": (meta_edit(lambda d: d.update({T + "r": 3})), True),
        "r_8": (meta_edit(lambda d: d.update({T + "r": 8})), False),
        "decompose_both_r_4": (meta_edit(lambda d: d.update({T + "decompose_both": True})), False),
        "decompose_both_r_3": (meta_edit(lambda d: d.update({T + "decompose_both": True, T + "r": 3})), True),
        "rank_pattern_q_1": (meta_edit(lambda d: d.update({T + "rank_pattern": {"to_q": 1}})), True),
        "rank_pattern_0": (meta_edit(lambda d: d.update({T + "rank_pattern": {"to_q": 0}})), True),
        "rank_pattern_str": (meta_edit(lambda d: d.update({T + "rank_pattern": {"to_q": "x"}})), True),
        "alpha_pattern_nan": (meta_edit(raw='{"transformer.alpha": 2, "transformer.r": 4, "transformer.peft_type": "LOKR", '
                                            '"transformer.alpha_pattern": {"to_q": NaN}}'), True),
        "alpha_pattern_str": (meta_edit(lambda d: d.update({T + "alpha_pattern": {"to_q": "2"}})), True),
        "peft_type_lora": (meta_edit(lambda d: d.update({T + "peft_type": "LORA"})), None),
        "peft_type_null": (meta_edit(lambda d: d.update({T + "peft_type": None})), None),
        "peft_type_int": (meta_edit(lambda d: d.update({T + "peft_type": 3})), None),
        "prefix_unet": (meta_edit(lambda d: {k.replace("transformer.", "unet."): v for k, v in d.items()}), None),
        "unprefixed": (meta_edit(lambda d: {k.replace("transformer.", ""): v for k, v in d.items()}), None),
        "not_json": (meta_edit(raw="{"), True),
        "list": (meta_edit(raw="[1, 2]"), True),
        "number": (meta_edit(raw="4"), True),
        "empty": (meta_edit(raw=""), True),
        "deep": (meta_edit(raw="[" * 100000 + "]" * 100000), True),
    }
    for what, (fn, refuse) in lies.items():
        c = Case(f"r13_lokrmeta_{what}", (ZI + "base.safetensors", "b.safetensors"), (ZI + "saved.safetensors", "a.safetensors"))
        fn(c.p("a.safetensors"))
        if refuse:
            run(c, MF, mention=["a.safetensors"])
        else:
            either(c, MF)
        either(c, ["inspect", "a.safetensors"])
        either(c, ["check", "a.safetensors", "--target", "diffusers"], refusals=(1, 2))
        either(c, ["check", "a.safetensors", "--base", "b.safetensors"], refusals=(1, 2))
        either(c, ["convert", "a.safetensors", "--to", "peft", "--out", "conv"])
    # The factors lie beside honest metadata.
    K = "transformer.layers.0.attention.to_q."
    flies = {
        "w1_nan": st_set(K + "lokr_w1", "F32", [4, 4], f32([NAN] * 16)),
        "w2_wrong": st_set(K + "lokr_w2", "F32", [4, 5], f32z(20)),
        "w2_low_rank_3": lambda t: (t.pop(K + "lokr_w2"), st_set(K + "lokr_w2_a", "F32", [4, 3], f32z(12))(t),
                                    st_set(K + "lokr_w2_b", "F32", [3, 4], f32z(12))(t)),
        "w1_missing": lambda t: t.pop(K + "lokr_w1"),
        "alpha_tensor_nan": st_set(K + "alpha", "F32", [], f32([NAN])),
    }
    for what, fn in flies.items():
        c = Case(f"r13_lokrf_{what}", (ZI + "base.safetensors", "b.safetensors"), (ZI + "saved.safetensors", "a.safetensors"))
        st_edit(c.p("a.safetensors"), fn)
        run(c, MF, mention=["a.safetensors", "to_q"])
        either(c, ["check", "a.safetensors", "--base", "b.safetensors"], refusals=(1, 2))
    # ERNIE-Image / Helios / SkyReels-V2 files (check reads their loaders' names).
    for fam in ("ernie_image", "helios", "skyreels_v2"):
        root = "diffusion12/mixins/" + fam + "/"
        srcs = [f for f in ("diffusers", "peft") if os.path.exists(_fx(root + f + ".safetensors"))]
        for src in srcs:
            t0, _ = st_tensors(_fx(root + src + ".safetensors"))
            ka = sorted(k for k in t0 if k.endswith("lora_A.weight") or k.endswith("lora_down.weight"))[0]
            kb = ka.replace("lora_A", "lora_B").replace("lora_down", "lora_up")
            mod = ka.rsplit(".", 2)[0].split(".")[-1]
            adt, ash, araw = t0[ka]
            flies = {
                "b_missing": (lambda t: t.pop(kb), True),
                "a_nan": (st_set(ka, "F32", ash, f32([NAN] * (len(araw) // 4))), True),
                "a_wide": (st_set(ka, "F32", [ash[0], ash[1] + 1], f32z(ash[0] * (ash[1] + 1))), True),
                "reprefixed": (lambda t: [t.__setitem__("diffusion_model." + k, t.pop(k)) for k in list(t)], None),
                "double_prefix": (lambda t: [t.__setitem__("transformer." + k, t.pop(k)) for k in list(t)], None),
            }
            for what, (fn, refuse) in flies.items():
                c = Case(f"r13_mixin_{fam}_{src}_{what}", (root + "base.safetensors", "b.safetensors"),
                         (root + src + ".safetensors", "a.safetensors"))
                st_edit(c.p("a.safetensors"), fn)
                if refuse:
                    run(c, MF, mention=["a.safetensors", (mod,)])
                else:
                    either(c, MF)
                for target in ("diffusers", "comfy"):
                    either(c, ["check", "a.safetensors", "--target", target], refusals=(1, 2))
                either(c, ["check", "a.safetensors", "--base", "b.safetensors"], refusals=(1, 2))
