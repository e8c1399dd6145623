"""Round-12 cases of fuzz/hostile_round.py: the code added in round 11's session (no hostile round
has seen it) and the classes rounds 1-11 left out.

Rounds 1-11 covered (see hostile_round.py and the docstrings of hostile_cases_round6.py to
hostile_cases_round11.py): lies in every input format's header and tensors, sizes no file can
back, names, output paths onto inputs in every spelling, existing outputs, read-only and full
disks, `ulimit -f/-n/-v`, signals, concurrent writers, truncation while mapped, thread counts,
GGUF alphas of every type, tied embeddings, BFL control LoRAs, LTX-2/Flux.3 roots, mlx-lm adapter
configs and tensors, PEFT VeRA/VB-LoRA/HRA/BOFT/DeLoRA/LN-tuning lies, Flux.2 LoKr, a first
look at MLX-quantized bases (one module, three config lies), `__metadata__` shapes, regexes only
one of Python's `re` and the `regex` crate reads. What they missed, tried here:
  * mlx_qconfig_lies: config.json `quantization` / `quantization_config` of the mlx-community
    fixtures (fixtures/mlx_quant) with bits / group_size of 0, 1, 7, 9, 33, 2^32+4, 2^64,
    negative, float, string, null, a list; an unknown, empty, null or upper-case `mode`; the
    whole dict null, a list, a string, empty; only one of the two keys lying; per-module entries
    `false`, `true`, `{}`, `null`, a number, a list, settings contradicting the packed shape, an
    unknown mode; a per-module entry on a float module (mlx-lm quantizes it, then the stored
    float weight no longer loads);
  * mlx_qtensor_lies: scales/biases of another dtype (I32, U8, F64, F8) or of two dtypes, of the
    wrong shape (one group too many, transposed, 1-D, 3-D), one of them missing, NaN/±inf scales
    and biases in f32, f16 and bf16; packed weights of I32/U8/U16/I64 beside scales, 1-D, 3-D, a
    width whose codes do not fill the groups, zero words, rows disagreeing with the scales; each
    through `merge` (keep), `merge --quant dequantize`, `dequantize`, `inspect`, `check --base`;
  * mlx_packed_adapters: an mlx-lm and a PEFT adapter whose factors fit the *packed* width of an
    MLX base (8 words of a 64-wide 4-bit weight), not its logical one;
  * quant_check_base: `check --base` (and merge) on every quantized base fixture (bitsandbytes
    NF4/FP4/int8, GPTQ, AWQ, FP8 block, compressed-tensors pack/FP8, ComfyUI FP8) with an
    adapter whose shapes miss the logical shape, and NF4 quant_state JSON that lies about it;
  * peft_gaps11_lies: PEFT MiSS/Bone, SHiRA, C3A, GraLoRA, RandLoRA folders (fixtures/gaps11):
    tensors missing or of the wrong shape, NaN, SHiRA indices out of range / negative /
    duplicated / of float and other integer dtypes, configs contradicting the stored shapes
    (C3A block_size, GraLoRA r / gralora_k / hybrid_r, RandLoRA r, MiSS r / mini_r), RandLoRA's
    shared bases missing;
  * diffusion11_lies: the diffusers-converted layouts of round 11's session (Anima, Krea 2,
    Ideogram 4, ACE-Step, MiniMax-H3, Cosmos): half pairs, grown factors, ranks that disagree,
    NaN factors, alphas of the wrong shape/dtype or NaN, one module with a second prefix, files
    half in one convention and half in another;
  * regex_flags: `target_modules` with `(?x)` and flags after whitespace or comments, global
    flags after a literal, inside a group, after `|`, after an assertion, unknown flags that both
    Python and the crate refuse; each verdict is Python 3.11's `re.compile` (recorded below).

Results, 2026-12-06, debug build, as root. Against the binary of a4e09c7 (before this round's
fixes), this file's 3,110 cases: 103 violated checks in 50 case folders (mlx_qconfig_lies 12,
mlx_qtensor_lies 30, peft_gaps11_lies 42, regex_flags 19; the other three functions 0). Fixed
(tests in tests/it/hostile12.rs, each failing on the pre-fix tree):
  * `target_modules` global flags judged by the characters before them (`(?)imsxau`): refused
    `(?x) (?i)…` after whitespace or a comment, which Python reads, and merged `m(?i)…` and
    `((?i)…)`; flags both Python and the crate refuse (`(?q)`, `(?--i)`, `(?i-)`,
    `(?-)`, `(?i-i:…)`) selected every module (adapter/formats/peft/targets.rs);
  * PEFT C3A `block_size` (and `block_size_pattern`), GraLoRA `r`/`gralora_k`/`hybrid_r`, MiSS
    and RandLoRA `r` contradicting the stored shapes, and a 2-D SHiRA `shira_weight`: merged
    from the tensors where PEFT refuses the state dict (peft/{c3a,gralora,miss,randlora,shira}.rs);
  * MLX `P.scales`/`P.biases` beside a `P.weight` of I32/U8/U16/I64/F32: dequantize copied the
    weight and its scales (exit 0), merge copied them on modules the adapter does not change
    (io/quant/scan.rs).
Left to the lead (src/io/quant/mlx_scan.rs, not this round's file): `bits` 2^32+4, top-level or
per-module, is truncated by `bits as u32` to 4 before the BITS check and merged/dequantized as
4-bit (12 checks in r12_mlxqc_bits_2p32_4 and r12_mlxqc_mod_bits_huge, still violations).
Accepted as valid (not counted), after reading the producer: a per-module quantization entry on
a float module (mlx-lm would quantize it, then fail to load the float weight; lorakit reads the
stored tensor); zero-word or half-row MLX weights whose scales agree (a consistent base the
adapter misses: only the merges refuse); `quantization_config` lying where `quantization` is
right (mlx-lm reads `quantization`); an NF4 quant_state of 1-D or 3-D shape (a consistent base
of another shape, refused as the adapter's mismatch); SHiRA indices duplicated or stored as
I64/I16/U8/F32 (run either way: not compared with PEFT in this round); half-converted or re-prefixed diffusion11 files.
Not checked (gap): SHiRA's `r` against the stored count (PEFT builds r·(in+out) values, which
needs the base's shape where the reader has only the indices).
The whole round, all twelve files, on this round's final binary (hos12 at 3754b14): 10,633
cases in 1,814 s on the loaded machine, 12 violated checks in the 2 case folders above, 0
skipped, 0 known.
"""
import json, os, struct

from hostile_cases_round5 import INF, NAN, either, f32z, st_set
from hostile_lib import BASE, QV, Case, case, f32, run, st_build, st_edit, st_tensors, violation

MB = ["merge", "--base", "base", "--adapter", "ad", "--out", "o"]
MBD = MB + ["--quant", "dequantize"]
MQ = "mlx_quant/"
BASEF = ("model.safetensors", "config.json")


def _f16(vals):
    return struct.pack("<%de" % len(vals), *vals)


def _bf16(vals):
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


def _enc(dt, vals):
    return {"F32": f32, "F16": _f16, "BF16": _bf16}[dt](vals)


def _dec(dt, raw):
    if dt == "F32":
        return list(struct.unpack("<%df" % (len(raw) // 4), raw))
    if dt == "F16":
        return list(struct.unpack("<%de" % (len(raw) // 2), raw))
    return [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]


def _mention(m):
    return m if isinstance(m, tuple) else (m,)


def _mlx_case(name, fx, adapter):
    return Case(name, (MQ + fx, "base"), (MQ + adapter, "ad"))


def _mlx_cmds(c, refuse, mention, check=True):
    """merge (keep and dequantize) and dequantize must refuse naming `mention` (`refuse` True;
    "merge": the base is consistent, only the merges must refuse; False: refuse cleanly or
    succeed); inspect and check --base must not panic."""
    for argv in (MB, MBD, ["dequantize", "base", "--out", "dq"]):
        if refuse is True or (refuse == "merge" and argv[0] == "merge"):
            run(c, argv, mention=[_mention(mention)])
        else:
            either(c, argv)
    either(c, ["inspect", "base"])
    if check:
        either(c, ["check", "ad", "--base", "base"], refusals=(1, 2))


# ---------------------------------------------------------------- MLX quantization configs
def _q(**kw):
    """Sets keys of both `quantization` and `quantization_config` (KeyError drops the key)."""
    def fn(j):
        for top in ("quantization", "quantization_config"):
            for k, v in kw.items():
                if v is KeyError:
                    j[top].pop(k, None)
                else:
                    j[top][k] = v
    return fn


def _qtop(v, which=("quantization", "quantization_config")):
    def fn(j):
        for top in which:
            j[top] = v
    return fn


def _qmod(mod, v):
    def fn(j):
        for top in ("quantization", "quantization_config"):
            j[top][mod] = v
    return fn


QP0 = "model.layers.0.self_attn.q_proj"


@case
def mlx_qconfig_lies():
    CFG = ("config.json", "quantization")
    # (fixture, edit, refuse): every q4 weight is 4-bit in groups of 64 (8 words of 64 columns).
    lies = {
        "bits_0": ("q4", _q(bits=0), True), "bits_1": ("q4", _q(bits=1), True),
        "bits_7": ("q4", _q(bits=7), True), "bits_9": ("q4", _q(bits=9), True),
        "bits_33": ("q4", _q(bits=33), True), "bits_2p32_4": ("q4", _q(bits=2 ** 32 + 4), True),
        "bits_2p64": ("q4", _q(bits=2 ** 64), True), "bits_neg": ("q4", _q(bits=-4), True),
        "bits_float": ("q4", _q(bits=4.0), True), "bits_half": ("q4", _q(bits=4.5), True),
        "bits_string": ("q4", _q(bits="4"), True), "bits_null": ("q4", _q(bits=None), True),
        "bits_true": ("q4", _q(bits=True), True), "bits_list": ("q4", _q(bits=[4]), True),
        "bits_missing": ("q4", _q(bits=KeyError), True),
        "bits_8": ("q4", _q(bits=8), True), "bits_2": ("q4", _q(bits=2), True),
        "bits_3": ("q4", _q(bits=3), True),
        "gs_0": ("q4", _q(group_size=0), True), "gs_1": ("q4", _q(group_size=1), True),
        "gs_7": ("q4", _q(group_size=7), True), "gs_33": ("q4", _q(group_size=33), True),
        "gs_32": ("q4", _q(group_size=32), True), "gs_128": ("q4", _q(group_size=128), True),
        "gs_2p32_64": ("q4", _q(group_size=2 ** 32 + 64), True), "gs_2p64": ("q4", _q(group_size=2 ** 64), True),
        "gs_neg": ("q4", _q(group_size=-64), True), "gs_float": ("q4", _q(group_size=64.0), True),
        "gs_string": ("q4", _q(group_size="64"), True), "gs_null": ("q4", _q(group_size=None), True),
        "gs_missing": ("q4", _q(group_size=KeyError), True),
        "mode_unknown": ("q4", _q(mode="gptq"), True), "mode_empty": ("q4", _q(mode=""), True),
        "mode_upper": ("q4", _q(mode="AFFINE"), True), "mode_null": ("q4", _q(mode=None), True),
        "mode_int": ("q4", _q(mode=1), True), "mode_mxfp4": ("q4", _q(mode="mxfp4"), True),
        "mode_missing": ("q4", _q(mode=KeyError), False),
        "q_null": ("q4", _qtop(None), True), "q_list": ("q4", _qtop([64, 4]), True),
        "q_string": ("q4", _qtop("4bit"), True), "q_empty": ("q4", _qtop({}), True),
        "q_number": ("q4", _qtop(4), True),
        # mlx-lm reads `quantization` (then `quantization_config` where it is absent).
        "only_q_lies": ("q4", _qtop({"group_size": 32, "bits": 4}, ("quantization",)), True),
        "only_qc_lies": ("q4", _qtop({"group_size": 32, "bits": 4}, ("quantization_config",)), False),
        "only_qc": ("q4", lambda j: j.pop("quantization"), False),
        # Per-module entries (qmix: layer 0's q_proj is 3-bit in groups of 32).
        "mod_false": ("qmix_bf16", _qmod(QP0, False), True),
        "mod_true": ("qmix_bf16", _qmod(QP0, True), True),
        "mod_empty": ("qmix_bf16", _qmod(QP0, {}), True),
        "mod_null": ("qmix_bf16", _qmod(QP0, None), True),
        "mod_number": ("qmix_bf16", _qmod(QP0, 3), True),
        "mod_list": ("qmix_bf16", _qmod(QP0, [32, 3]), True),
        "mod_string": ("qmix_bf16", _qmod(QP0, "3bit"), True),
        "mod_bits_only": ("qmix_bf16", _qmod(QP0, {"bits": 3}), True),
        "mod_bits_4": ("qmix_bf16", _qmod(QP0, {"group_size": 32, "bits": 4}), True),
        "mod_gs_64": ("qmix_bf16", _qmod(QP0, {"group_size": 64, "bits": 3}), True),
        "mod_mode_unknown": ("qmix_bf16", _qmod(QP0, {"group_size": 32, "bits": 3, "mode": "nope"}), True),
        "mod_bits_huge": ("qmix_bf16", _qmod(QP0, {"group_size": 32, "bits": 2 ** 32 + 3}), True),
        "mod_bits_string": ("qmix_bf16", _qmod(QP0, {"group_size": 32, "bits": "3"}), True),
        "mod_same": ("qmix_bf16", _qmod(QP0, {"group_size": 32, "bits": 3}), False),
        "mod_q4_empty": ("q4", _qmod(QP0, {}), False),  # {} is affine 64/4: q4's own settings
        "mod_q4_true": ("q4", _qmod(QP0, True), False),
        # A per-module entry on a float module: mlx-lm quantizes it, then cannot load the float
        # weight; lorakit reads the stored tensor (accepted, refused or merged cleanly).
        "mod_on_float": ("q4", _qmod("model.layers.0.mlp.down_proj", {"group_size": 64, "bits": 4}), False),
    }
    for what, (fx, fn, refuse) in lies.items():
        c = _mlx_case(f"r12_mlxqc_{what}", fx, "lora_" + fx)
        c.json_edit("base/config.json", fn)
        _mlx_cmds(c, refuse, CFG + ("q_proj", "weight"))
    raw = {"not_json": b"{\"quantization\": {", "empty": b"", "list": b"[]"}
    for what, text in raw.items():
        c = _mlx_case(f"r12_mlxqc_raw_{what}", "q4", "lora_q4")
        c.write("base/config.json", text)
        _mlx_cmds(c, True, ("config.json",))


# ---------------------------------------------------------------- MLX quantized tensors
@case
def mlx_qtensor_lies():
    for fx in ("q4", "q8_f16", "qmix_bf16"):
        # A module the fixture's adapter changes (lora_q8_f16 adapts layer 1 only).
        mod = QP0.replace("layers.0", "layers.1") if fx == "q8_f16" else QP0
        W, S, B = mod + ".weight", mod + ".scales", mod + ".biases"
        t0, _ = st_tensors(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                                        MQ + fx, "model.safetensors"))
        sdt, ssh, sraw = t0[S]
        wdt, wsh, wraw = t0[W]
        rows, groups = ssh
        ns = rows * groups
        sv = _dec(sdt, sraw)

        def scales(vals, key=S):
            return st_set(key, sdt, [rows, groups], _enc(sdt, vals))

        lies = {
            "scales_i32": (st_set(S, "I32", ssh, b"\1\0\0\0" * ns), True),
            "scales_u8": (st_set(S, "U8", ssh, b"\1" * ns), True),
            "scales_f64": (st_set(S, "F64", ssh, struct.pack("<%dd" % ns, *sv)), True),
            "scales_f8": (st_set(S, "F8_E4M3", ssh, b"\x38" * ns), True),
            "biases_other_dtype": (st_set(B, "F32" if sdt != "F32" else "F16", ssh,
                                          (f32z(ns, 0.0) if sdt != "F32" else _f16([0.0] * ns))), True),
            "scales_one_group_more": (st_set(S, sdt, [rows, groups + 1], _enc(sdt, sv + sv[:rows])), True),
            "both_one_group_more": (lambda t: (st_set(S, sdt, [rows, groups + 1], _enc(sdt, sv + sv[:rows]))(t),
                                               st_set(B, sdt, [rows, groups + 1], _enc(sdt, [0.0] * (ns + rows)))(t)),
                                    True),
            "scales_transposed": (st_set(S, sdt, [groups, rows], sraw), groups != 1),
            "scales_1d": (st_set(S, sdt, [ns], sraw), True),
            "scales_3d": (st_set(S, sdt, [1, rows, groups], sraw), True),
            "biases_missing": (lambda t: t.pop(B), True),
            "scales_missing": (lambda t: t.pop(S), True),
            "both_missing": (lambda t: (t.pop(S), t.pop(B)), True),
            "scale_nan": (scales([NAN] + sv[1:]), True),
            "scale_inf": (scales([INF] + sv[1:]), True),
            "scale_neg_inf": (scales(sv[:-1] + [-INF]), True),
            "bias_nan": (scales([NAN] + [0.0] * (ns - 1), B), True),
            "scale_zero": (scales([0.0] * ns), False),
            "scale_huge": (scales([6e4 if sdt == "F16" else 3e38] * ns), False),
            "weight_i32": (st_set(W, "I32", wsh, wraw), True),
            "weight_u8": (st_set(W, "U8", [wsh[0], wsh[1] * 4], wraw), True),
            "weight_u16": (st_set(W, "U16", [wsh[0], wsh[1] * 2], wraw), True),
            "weight_i64": (st_set(W, "I64", [wsh[0], wsh[1] // 2], wraw), wsh[1] % 2 == 0),
            "weight_f32": (st_set(W, "F32", wsh, wraw), True),
            "weight_1d": (st_set(W, "U32", [wsh[0] * wsh[1]], wraw), True),
            "weight_3d": (st_set(W, "U32", [1, wsh[0], wsh[1]], wraw), True),
            "weight_one_word_less": (st_set(W, "U32", [wsh[0], wsh[1] - 1], wraw[:4 * wsh[0] * (wsh[1] - 1)]), True),
            "weight_one_word_more": (st_set(W, "U32", [wsh[0], wsh[1] + 1], wraw + b"\0" * (4 * wsh[0])), True),
            "weight_zero_words": (lambda t: (st_set(W, "U32", [wsh[0], 0], b"")(t),
                                             st_set(S, sdt, [rows, 0], b"")(t), st_set(B, sdt, [rows, 0], b"")(t)),
                                  "merge"),  # a consistent [rows, 0] weight: only the adapter misses it
            "weight_half_rows": (st_set(W, "U32", [wsh[0] // 2, wsh[1]], wraw[:len(wraw) // 2]), True),
            "all_half_rows": (lambda t: (st_set(W, "U32", [wsh[0] // 2, wsh[1]], wraw[:len(wraw) // 2])(t),
                                         st_set(S, sdt, [rows // 2, groups], sraw[:len(sraw) // 2])(t),
                                         st_set(B, sdt, [rows // 2, groups], t[B][2][:len(t[B][2]) // 2])(t)),
                              "merge"),
        }
        if sdt != "F32":
            lies["scale_nan_payload"] = (st_set(S, sdt, ssh, (b"\x01\x7e" if sdt == "F16" else b"\x81\x7f")
                                                + sraw[2:]), True)
        for what, (fn, refuse) in lies.items():
            c = _mlx_case(f"r12_mlxqt_{fx}_{what}", fx, "lora_" + fx)
            st_edit(c.p("base/model.safetensors"), fn)
            _mlx_cmds(c, refuse, ("q_proj",))


# ---------------------------------------------------------------- adapters of the packed shape
@case
def mlx_packed_adapters():
    P = "model.layers.0.self_attn.q_proj"
    # mlx-lm: lora_a [in, r], lora_b [r, out]; q4's q_proj is [64, 64] logical, [64, 8] packed.
    packed = {
        "mlx_a_packed_in": lambda t: t.__setitem__(P + ".lora_a", ("F32", [8, 4], f32z(32))),
        "mlx_b_packed_out": lambda t: t.__setitem__(P + ".lora_b", ("F32", [4, 8], f32z(32))),
        "mlx_both_packed": lambda t: (t.__setitem__(P + ".lora_a", ("F32", [8, 4], f32z(32))),
                                      t.__setitem__(P + ".lora_b", ("F32", [4, 8], f32z(32)))),
        "mlx_embed_packed": lambda t: t.__setitem__("model.embed_tokens.lora_b", ("F32", [4, 8], f32z(32))),
    }
    for what, fn in packed.items():
        c = _mlx_case(f"r12_mlxpk_{what}", "q4", "lora_q4")
        st_edit(c.p("ad/adapters.safetensors"), fn)
        mod = "embed_tokens" if "embed" in what else "q_proj"
        for argv in (MB, MBD):
            run(c, argv, mention=["ad", mod])
        run(c, ["check", "ad", "--base", "base"], rc=(1, 2), mention=["ad", mod])
    # A PEFT folder whose q_proj fits the packed width (8) instead of 64.
    for what, (a, b) in {"peft_packed_in": ([4, 8], [64, 4]), "peft_packed_out": ([4, 64], [8, 4]),
                         "peft_transposed_packed": ([8, 4], [4, 64])}.items():
        c = Case(f"r12_mlxpk_{what}", (MQ + "q4", "base"))
        c.write("ad/adapter_config.json", json.dumps({
            "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "none",
            "task_type": "CAUSAL_LM", "fan_in_fan_out": False}))
        pre = "base_model.model." + P
        st_build(c.p("ad/adapter_model.safetensors"), {
            pre + ".lora_A.weight": ("F32", a, f32z(a[0] * a[1])),
            pre + ".lora_B.weight": ("F32", b, f32z(b[0] * b[1])),
        })
        for argv in (MB, MBD):
            run(c, argv, mention=["ad", "q_proj"])
        run(c, ["check", "ad", "--base", "base"], rc=(1, 2), mention=["ad", "q_proj"])


# ---------------------------------------------------------------- check --base on quantized bases
@case
def quant_check_base():
    QA, QB = ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
              "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
    lies = {
        "b_65": st_set(QB, "F32", [65, 8], f32z(520)),
        "a_63": st_set(QA, "F32", [8, 63], f32z(504)),
        "a_32": st_set(QA, "F32", [8, 32], f32z(256)),  # a 4-bit packed width
        "both_32": lambda t: (st_set(QA, "F32", [8, 32], f32z(256))(t), st_set(QB, "F32", [32, 8], f32z(256))(t)),
    }
    for fx in ("nf4", "fp4", "int8", "gptq4_v1", "awq4", "fp8_block", "ct_pack", "ct_fp8", "comfy_fp8", "nf4_dq"):
        for what, fn in lies.items():
            c = Case(f"r12_qcheck_{fx}_{what}", ("quant/" + fx, "base"), (QV, "ad"))
            st_edit(c.p("ad/adapter_model.safetensors"), fn)
            run(c, MB, mention=["ad", "q_proj"])
            run(c, ["check", "ad", "--base", "base"], rc=(1, 2), mention=["q_proj"])
    # NF4 quant_state JSON lying about the logical shape.
    K = "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"
    for what, shape in {"qs_rows_65": [65, 64], "qs_cols_32": [64, 32], "qs_1d": [4096], "qs_3d": [1, 64, 64],
                        "qs_neg": [-64, -64], "qs_string": "64x64", "qs_huge": [2 ** 40, 2 ** 40]}.items():
        c = Case(f"r12_qcheck_nf4_{what}", ("quant/nf4", "base"), (QV, "ad"))
        p = c.p("base/model.safetensors")
        t, meta = st_tensors(p)
        if K not in t:
            raise RuntimeError(f"{c.name}: no {K}")
        qs = json.loads(t[K][2].decode())
        qs["shape"] = shape
        b = json.dumps(qs).encode()
        t[K] = ("U8", [len(b)], b)
        st_build(p, t, meta)
        # A 1-D or 3-D state is a consistent base of another shape: then the adapter misses it.
        run(c, MB, mention=[BASEF + ("base tensor",), "q_proj"])
        run(c, ["check", "ad", "--base", "base"], rc=(1, 2), mention=[BASEF + ("base tensor",)])
        either(c, ["inspect", "base"])


# ---------------------------------------------------------------- PEFT tuners of gaps11
G = "gaps11/"
P = "base_model.model.model.layers.0."


def _peft(name, fixture, fn=None, cfg=None, mention=None):
    c = Case(f"r12_tuner_{name}", (BASE, "base"), (G + fixture + "/adapter", "ad"))
    if fn is not None:
        st_edit(c.p("ad/adapter_model.safetensors"), fn)
    if cfg is not None:
        c.json_edit("ad/adapter_config.json", cfg)
    if mention is None:
        either(c, MB)
    else:
        run(c, MB, mention=["ad", _mention(mention)])
    either(c, ["inspect", "ad"])
    either(c, ["check", "ad", "--base", "base"], refusals=(1, 2))
    either(c, ["convert", "ad", "--to", "peft", "--out", "conv"])


def _ints(dt, vals):
    code = {"I32": "i", "I64": "q", "I16": "h", "U8": "B", "F32": "f"}[dt]
    return struct.pack("<%d%s" % (len(vals), code), *vals)


@case
def peft_gaps11_lies():
    MQP = P + "self_attn.q_proj.miss_block"
    miss = {
        "block_missing": (lambda t: t.pop(MQP), None, None),  # fewer modules: a smaller adapter
        "block_3d": (st_set(MQP, "F32", [1, 3, 64], f32z(192)), None, "q_proj"),
        "block_63": (st_set(MQP, "F32", [3, 63], f32z(189)), None, "q_proj"),
        "block_65": (st_set(MQP, "F32", [3, 65], f32z(195)), None, "q_proj"),
        "block_r_4": (st_set(MQP, "F32", [4, 64], f32z(256)), None, ("q_proj", "r")),
        "block_r_0": (st_set(MQP, "F32", [0, 64], b""), None, "q_proj"),
        "block_nan": (st_set(MQP, "F32", [3, 64], f32([NAN] * 192)), None, ("q_proj", "NaN", "finite")),
        "cfg_r_4": (None, lambda j: j.update(r=4), ("r", "q_proj", "miss_block")),
        "cfg_r_0": (None, lambda j: j.update(r=0), "r"),
        "cfg_r_string": (None, lambda j: j.update(r="3"), "r"),
        "cfg_init_unknown": (None, lambda j: j.update(init_weights="nope"), "init_weights"),
        "cfg_init_bat": (None, lambda j: j.update(init_weights="bat"), ("q_proj", "bat", "miss_block")),
        "cfg_init_mini": (None, lambda j: j.update(init_weights="mini"), ("q_proj", "mini", "miss_block")),
        "cfg_bone": (None, lambda j: j.update(peft_type="BONE"), None),
    }
    for what, (fn, cfg, mention) in miss.items():
        _peft("miss_" + what, "miss", fn, cfg, mention)
    BQP = P + "self_attn.q_proj.miss_block"
    bat = {
        "block_15": (st_set(BQP, "F32", [15, 4, 4], f32z(240)), None, "q_proj"),
        "block_not_square": (st_set(BQP, "F32", [16, 4, 3], f32z(192)), None, "q_proj"),
        "block_2d": (st_set(BQP, "F32", [64, 4], f32z(256)), None, "q_proj"),
        "cfg_r_8": (None, lambda j: j.update(r=8), ("r", "q_proj", "miss_block")),
        "cfg_r_5": (None, lambda j: j.update(r=5), ("r", "q_proj", "miss_block")),
    }
    for what, (fn, cfg, mention) in bat.items():
        _peft("missbat_" + what, "miss_bat", fn, cfg, mention)
    mini = {
        "block_mini_7": (st_set(BQP, "F32", [4, 7], f32z(28)), None, ("q_proj", "mini_r")),
        "cfg_mini_7": (None, lambda j: j.update(mini_r=7), ("mini_r", "q_proj")),
        "cfg_mini_0": (None, lambda j: j.update(mini_r=0), ("mini_r", "q_proj")),
        "cfg_mini_16": (None, lambda j: j.update(mini_r=16), ("mini_r", "q_proj")),
        "cfg_mini_string": (None, lambda j: j.update(mini_r="8"), "mini_r"),
    }
    for what, (fn, cfg, mention) in mini.items():
        _peft("missmini_" + what, "miss_mini", fn, cfg, mention)
    SW, SI = P + "self_attn.q_proj.shira_weight", P + "self_attn.q_proj.shira_indices"

    def idx(fn_rows_cols, dt="I32"):
        def edit(t):
            raw = t[SI][2]
            vals = list(struct.unpack("<%di" % (len(raw) // 4), raw))
            n = len(vals) // 2
            rows, cols = fn_rows_cols(vals[:n], vals[n:])
            t[SI] = (dt, [2, n], _ints(dt, rows + cols))
        return edit

    shira = {
        "row_past": (idx(lambda r, c: ([64] + r[1:], c)), None, "q_proj"),
        "col_past": (idx(lambda r, c: (r, c[:-1] + [64])), None, "q_proj"),
        "row_neg": (idx(lambda r, c: ([-1] + r[1:], c)), None, "q_proj"),
        "col_huge": (idx(lambda r, c: (r, [2 ** 31 - 1] + c[1:])), None, "q_proj"),
        "dup": (idx(lambda r, c: ([r[1]] + r[1:], [c[1]] + c[1:])), None, None),
        "as_i64": (idx(lambda r, c: (r, c), "I64"), None, None),
        "as_i16": (idx(lambda r, c: (r, c), "I16"), None, None),
        "as_f32": (idx(lambda r, c: ([float(x) for x in r], [float(x) for x in c]), "F32"), None, None),
        "as_u8": (idx(lambda r, c: (r, c), "U8"), None, None),
        "as_f32_frac": (idx(lambda r, c: ([x + 0.5 for x in r], c), "F32"), None, None),
        "shape_3_n": (lambda t: t.__setitem__(SI, ("I32", [3, 256], t[SI][2] + t[SI][2][:1024])), None, "q_proj"),
        "shape_n_2": (lambda t: t.__setitem__(SI, ("I32", [256, 2], t[SI][2])), None, "q_proj"),
        "weight_short": (lambda t: t.__setitem__(SW, ("F32", [255], t[SW][2][:1020])), None, "q_proj"),
        "weight_2d": (lambda t: t.__setitem__(SW, ("F32", [16, 16], t[SW][2])), None, "q_proj"),
        "weight_missing": (lambda t: t.pop(SW), None, "q_proj"),
        "indices_missing": (lambda t: t.pop(SI), None, "q_proj"),
        "weight_nan": (lambda t: t.__setitem__(SW, ("F32", [256], f32([NAN]) + t[SW][2][4:])), None,
                       ("q_proj", "NaN", "finite")),
        "weight_empty": (lambda t: (t.__setitem__(SW, ("F32", [0], b"")), t.__setitem__(SI, ("I32", [2, 0], b""))),
                         None, "q_proj"),
        "cfg_r_0": (None, lambda j: j.update(r=0), None),
        "cfg_r_huge": (None, lambda j: j.update(r=10 ** 6), None),
    }
    for what, (fn, cfg, mention) in shira.items():
        _peft("shira_" + what, "shira", fn, cfg, mention)
    CK = P + "self_attn.q_proj.c3a_kernel"
    c3a = {
        "cfg_block_0": (None, lambda j: j.update(block_size=0), ("block_size", "q_proj")),
        "cfg_block_8": (None, lambda j: j.update(block_size=8), ("block_size", "q_proj")),
        "cfg_block_5": (None, lambda j: j.update(block_size=5), ("block_size", "q_proj")),
        "cfg_block_neg": (None, lambda j: j.update(block_size=-16), "block_size"),
        "cfg_block_string": (None, lambda j: j.update(block_size="16"), "block_size"),
        "cfg_block_pattern": (None, lambda j: j.update(block_size_pattern={"q_proj": 8}), ("block_size", "q_proj")),
        "kernel_2d": (st_set(CK, "F32", [16, 16], f32z(256)), None, "q_proj"),
        "kernel_block_8": (st_set(CK, "F32", [8, 8, 8], f32z(512)), None, ("q_proj", "block_size")),
        "kernel_short": (st_set(CK, "F32", [4, 3, 16], f32z(192)), None, "q_proj"),
        "kernel_zero": (st_set(CK, "F32", [4, 4, 0], b""), None, "q_proj"),
        "kernel_nan": (st_set(CK, "F32", [4, 4, 16], f32([NAN] * 256)), None, ("q_proj", "NaN", "finite")),
        "kernel_orphan": (lambda t: t.__setitem__(P + "self_attn.q_proj.c3a_bias", ("F32", [64], f32z(64))), None,
                          "c3a_bias"),
    }
    for what, (fn, cfg, mention) in c3a.items():
        _peft("c3a_" + what, "c3a", fn, cfg, mention)
    GA, GB = P + "self_attn.q_proj.gralora_A", P + "self_attn.q_proj.gralora_B"
    gra = {
        "cfg_k_4": (None, lambda j: j.update(gralora_k=4), ("gralora_k", "q_proj")),
        "cfg_k_3": (None, lambda j: j.update(gralora_k=3), ("gralora_k", "q_proj")),
        "cfg_k_0": (None, lambda j: j.update(gralora_k=0), "gralora_k"),
        "cfg_r_16": (None, lambda j: j.update(r=16), ("r", "q_proj")),
        "cfg_r_6": (None, lambda j: j.update(r=6), ("r", "q_proj")),
        "cfg_hybrid_2": (None, lambda j: j.update(hybrid_r=2), ("hybrid_r", "q_proj")),
        "cfg_alpha_nan": (None, lambda j: j.update(alpha="NaN"), "alpha"),
        "a_k_mismatch": (st_set(GA, "F32", [4, 16, 8], f32z(512)), None, "q_proj"),
        "a_rank_6": (st_set(GA, "F32", [2, 32, 6], f32z(384)), None, "q_proj"),
        "b_missing": (lambda t: t.pop(GB), None, "q_proj"),
        "a_nan": (st_set(GA, "F32", [2, 32, 8], f32([NAN] * 512)), None, ("q_proj", "NaN", "finite")),
        "a_in_33": (st_set(GA, "F32", [2, 33, 8], f32z(528)), None, "q_proj"),
    }
    for what, (fn, cfg, mention) in gra.items():
        _peft("gralora_" + what, "gralora", fn, cfg, mention)
    GAG = P + "self_attn.q_proj.gralora_A_general.weight"
    grh = {
        "cfg_hybrid_0": (None, lambda j: j.update(hybrid_r=0), ("hybrid_r", "q_proj")),
        "cfg_hybrid_4": (None, lambda j: j.update(hybrid_r=4), ("hybrid_r", "q_proj")),
        "general_half": (lambda t: t.pop(GAG), None, "q_proj"),
        "general_wide": (st_set(GAG, "F32", [2, 63], f32z(126)), None, "q_proj"),
    }
    for what, (fn, cfg, mention) in grh.items():
        _peft("gralorah_" + what, "gralora_hybrid", fn, cfg, mention)
    RA, RB = "base_model.randlora_A", "base_model.randlora_B"
    RL, RG = P + "self_attn.q_proj.randlora_lambda", P + "self_attn.q_proj.randlora_gamma"
    rand = {
        "shared_a_missing": (lambda t: t.pop(RA), None, "randlora_A"),
        "shared_b_missing": (lambda t: t.pop(RB), None, "randlora_B"),
        "shared_both_missing": (lambda t: (t.pop(RA), t.pop(RB)), None, ("randlora", "save_projection")),
        "shared_a_narrow": (st_set(RA, "F32", [4, 1, 32], f32z(128)), None, ("randlora_A", "q_proj", "down_proj")),
        "shared_b_short": (st_set(RB, "F32", [64, 16, 4], f32z(4096)), None, ("randlora_B", "q_proj", "down_proj")),
        "shared_a_2d": (st_set(RA, "F32", [4, 64], f32z(256)), None, "randlora_A"),
        "shared_a_nan": (st_set(RA, "F32", [4, 1, 64], f32([NAN] * 256)), None, ("randlora_A", "NaN", "finite")),
        "lambda_3": (st_set(RL, "F32", [3, 16], f32z(48)), None, "q_proj"),
        "gamma_15": (st_set(RG, "F32", [15, 64], f32z(960)), None, "q_proj"),
        "lambda_missing": (lambda t: t.pop(RL), None, "q_proj"),
        "gamma_nan": (st_set(RG, "F32", [16, 64], f32([NAN] * 1024)), None, ("q_proj", "NaN", "finite")),
        "cfg_r_8": (None, lambda j: j.update(r=8), ("r", "q_proj", "randlora")),
        "cfg_r_0": (None, lambda j: j.update(r=0), "r"),
        "cfg_noproj": (None, lambda j: j.update(save_projection=False), None),
        "cfg_alpha_string": (None, lambda j: j.update(randlora_alpha="8"), "randlora_alpha"),
    }
    for what, (fn, cfg, mention) in rand.items():
        _peft("randlora_" + what, "randlora", fn, cfg, mention)


# ---------------------------------------------------------------- diffusers-converted layouts
D11 = "diffusion11/"
MF = ["merge", "--base", "b.safetensors", "--adapter", "a.safetensors", "--out", "o.safetensors"]
DOWN = (".lora_down.weight", ".lora_A.weight")
UP = (".lora_up.weight", ".lora_B.weight")


def _modules(t):
    out = {}
    for k in t:
        for i, suf in enumerate(DOWN + UP):
            if k.endswith(suf):
                out.setdefault(k[:-len(suf)], {})["down" if suf in DOWN else "up"] = k
    return {m: v for m, v in out.items() if len(v) == 2}


def _names(m):
    dot = m.split(".")
    us = m.split("_")
    return (m, dot[-1], "_".join(us[-2:]), ".".join(dot[-2:]))


@case
def diffusion11_lies():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", D11)
    files = {"anima": ("kohya", "peft", "comfy"), "ideogram4": ("kohya", "peft", "top"),
             "krea2": ("aitk", "alpha", "comfy"), "minimax_h3": ("aitk", "musubi"), "ace_step": ("peft",),
             "cosmos": ("diffusers",)}
    for fam, srcs in files.items():
        for src in srcs:
            t0, _ = st_tensors(os.path.join(root, fam, src + ".safetensors"))
            mods = _modules(t0)
            names = sorted(mods)
            m, m2 = names[0], names[-1]
            dk, uk = mods[m]["down"], mods[m]["up"]
            r, fan_in = t0[dk][1]
            out = t0[uk][1][0]
            ak = m + ".alpha"

            def grow(k, d):
                def fn(t):
                    sh = list(t[k][1])
                    sh[d] += 1
                    n = 1
                    for x in sh:
                        n *= x
                    t[k] = ("F32", sh, f32z(n))
                return fn

            def reprefix(t, pre):
                for k in [k for k in t if k.startswith(m2 + ".")]:
                    t[pre + k] = t.pop(k)

            def dup(t, pre):
                for k in [k for k in t if k.startswith(m + ".")]:
                    t[pre + k] = t[k]

            lies = {
                "up_missing": (lambda t: t.pop(uk), True),
                "down_missing": (lambda t: t.pop(dk), True),
                "down_in_grown": (grow(dk, 1), True),
                "up_out_grown": (grow(uk, 0), True),
                "rank_disagrees": (grow(uk, 1), True),
                "up_nan": (lambda t: t.__setitem__(uk, ("F32", t[uk][1], f32([NAN] * (out * r)))), True),
                "down_f16_inf": (lambda t: t.__setitem__(dk, ("F16", t[dk][1], _f16([INF] * (r * fan_in)))), True),
                "down_i32": (lambda t: t.__setitem__(dk, ("I32", t[dk][1], t[dk][2])), True),
                "alpha_vec": (st_set(ak, "F32", [2], f32([1.0, 1.0])), True),
                "alpha_nan": (st_set(ak, "F32", [], f32([NAN])), True),
                "alpha_inf": (st_set(ak, "F32", [], f32([INF])), True),
                "alpha_2d": (st_set(ak, "F32", [1, 1], f32([1.0])), None),
                "alpha_i64": (st_set(ak, "I64", [], struct.pack("<q", 2)), None),
                "alpha_bf16": (st_set(ak, "BF16", [], _bf16([2.0])), None),
                "alpha_orphan": (st_set(m + "_nope.alpha", "F32", [], f32([2.0])), None),
                "prefix_transformer": (lambda t: reprefix(t, "transformer."), None),
                "prefix_diffusion_model": (lambda t: reprefix(t, "diffusion_model."), None),
                "prefix_unet": (lambda t: reprefix(t, "unet."), None),
                "dup_second_prefix": (lambda t: dup(t, "transformer."), None),
                "dup_model_prefix": (lambda t: dup(t, "model."), None),
            }
            for other in srcs:
                if other == src:
                    continue
                to, _ = st_tensors(os.path.join(root, fam, other + ".safetensors"))

                def half(t, to=to):
                    om = _modules(to)
                    keep = sorted(_modules(t))[: max(1, len(_modules(t)) // 2)]
                    for k in [k for k in t if not any(k.startswith(x + ".") for x in keep)]:
                        t.pop(k)
                    for x in sorted(om)[len(om) // 2:]:
                        for k in to:
                            if k.startswith(x + "."):
                                t[k] = to[k]

                def both(t, to=to):
                    t.update(to)
                lies[f"half_{other}"] = (half, None)
                lies[f"all_{other}_too"] = (both, None)
            for what, (fn, refuse) in lies.items():
                c = Case(f"r12_d11_{fam}_{src}_{what}", (D11 + fam + "/base.safetensors", "b.safetensors"),
                         (D11 + fam + "/" + src + ".safetensors", "a.safetensors"))
                st_edit(c.p("a.safetensors"), fn)
                if refuse:
                    run(c, MF, mention=["a.safetensors", _names(m)])
                else:
                    either(c, MF)
                either(c, ["inspect", "a.safetensors"])
                for target in ("diffusers", "comfy"):
                    either(c, ["check", "a.safetensors", "--target", target], refusals=(1, 2))
                either(c, ["check", "a.safetensors", "--base", "b.safetensors"], refusals=(1, 2))
                either(c, ["convert", "a.safetensors", "--to", "peft", "--out", "conv"])


# ---------------------------------------------------------------- regex flags
# Each verdict is Python 3.11's re.compile (then re.fullmatch on "model.layers.0.self_attn.q_proj"):
# False = re refuses (PEFT raises at load: lorakit must refuse naming adapter_config.json),
# True = compiles and selects q_proj (lorakit must merge), None = compiles, selects nothing.
REGEX_FLAGS = {
    "(?x) .*q_proj": True, "(?x).* q_proj": True, " (?x).*q_proj": False,
    "(?x) (?i).*_PROJ": True, "(?x)\n(?i).*_PROJ": True, "(?x)# c\n(?i).*_PROJ": True,
    "(?x)\t(?i).*_PROJ": True, "(?x) (?s) (?i) .*_PROJ": True, "(?xi) .* _PROJ": True,
    "(?i)(?x).*_proj": True, "(?ix).*_PROJ": True, "(?x).*_proj#(?i)": True,
    ".*(?x)_proj": False, ".*_proj(?x)": False, "a(?i).*_proj": False, "s(?i).*_proj": False,
    "m(?i).*_proj": False, "(?i)x(?s).*_proj": False, "((?i).*_proj)": False, "(?:(?i)).*_proj": False,
    ".*_proj|(?i)x": False, "(?i).*_proj|x": True, "^(?i).*_proj": False, "\\b(?i).*_proj": False,
    "(?x)\\ (?i).*_proj": False, "(?x) [ ](?i).*_proj": False,
    "(?q).*_proj": False, "(?--i).*_proj": False, "(?i-).*_proj": False, "(?-).*_proj": False,
    "(?i-i:.*_proj)": False, "(?ii).*_proj": True, "(?i:).*_proj": True,
    "(?x).*q_proj\\A": None, "(?x)\\ .*q_proj": None,
}


@case
def regex_flags():
    for i, (pat, verdict) in enumerate(REGEX_FLAGS.items()):
        c = Case(f"r12_reflags_{i:02d}", (BASE, "base"), (QV, "ad"))
        c.json_edit("ad/adapter_config.json", lambda j, pat=pat: j.update(target_modules=pat))
        if verdict is False:
            run(c, MB, mention=["adapter_config.json", "target_modules"], timeout=60)
        elif verdict is True:
            # The adapter also holds v_proj: a pattern selecting q_proj only is refused as
            # selecting too little, never as a regex Python would not compile.
            p = either(c, MB)
            if p.returncode != 0 and "regex" in p.stderr:
                violation(c.name, f"refused a target_modules Python's re compiles ({pat!r})", p.stderr[:300])
        else:
            either(c, MB)
