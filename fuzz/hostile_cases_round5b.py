"""Round-5 cases of fuzz/hostile_round.py, second half: Flux/Wan adapters in BFL/kohya/XLabs/
musubi names merged across layouts (the final modulation's swapped halves, fused qkv and
linear1), and quantized bases whose config or scales lie. Helpers and verdicts are the first
half's (hostile_cases_round5.py) and hostile_lib.py's."""
import math

from hostile_cases_round5 import INF, NAN, either, f32z, st_set
from hostile_lib import STATS, Case, case, f32, run, st_edit, violation  # noqa: F401


# ---------------------------------------------------------------- Flux/Wan across layouts
FF, DF = "flux_final/", "diffusers_formats/"
KM = "lora_unet_final_layer_adaLN_modulation_1"
FINAL = ("final_layer", "norm_out", "adaLN")


def lie_cmds(c, merge, mention, adapter="a.safetensors", base_lie=False):
    """The merge must refuse naming `mention`; inspect, check (every target that reads these
    files) and diff of the lying file must not panic."""
    run(c, merge, mention=mention)
    f = merge[2] if base_lie else adapter
    either(c, ["inspect", f])
    either(c, ["diff", f, f], refusals=(1, 2))
    if not base_lie:
        for target in (None, "diffusers", "comfy"):
            either(c, ["check", f] + (["--target", target] if target else []), refusals=(1, 2))
        either(c, ["convert", f, "--to", "peft", "--out", "conv"])
    # check against the base (either file lying), for every target.
    either(c, ["check", adapter, "--base", merge[2]], refusals=(1, 2))


def either_cmds(c, merge, adapter="a.safetensors"):
    """Lies that describe another valid adapter: a merge or a clean refusal, and the readers."""
    either(c, merge)
    either(c, ["inspect", adapter])
    for target in (None, "diffusers", "comfy"):
        either(c, ["check", adapter] + (["--target", target] if target else []), refusals=(1, 2))
    either(c, ["check", adapter, "--base", merge[2]], refusals=(1, 2))


@case
def flux_final_layer():
    merge = ["merge", "--base", "b.safetensors", "--adapter", "a.safetensors", "--out", "o.safetensors"]
    up, down, alpha = KM + ".lora_up.weight", KM + ".lora_down.weight", KM + ".alpha"

    def fc(name, base=FF + "base.safetensors", adapter=FF + "kohya.safetensors"):
        return Case("r5_" + name, (base, "b.safetensors"), (adapter, "a.safetensors"))
    # The kohya module on the BFL final modulation, merged onto diffusers' norm_out.linear.
    lies = {
        "up_rows_33": st_set(up, "F32", [33, 2], f32z(66)),
        "up_rows_31": st_set(up, "F32", [31, 2], f32z(62)),
        "up_rows_64": st_set(up, "F32", [64, 2], f32z(128)),
        "down_in_15": st_set(down, "F32", [2, 15], f32z(30)),
        "down_in_32": st_set(down, "F32", [2, 32], f32z(64)),
        "rank_disagree": st_set(down, "F32", [3, 16], f32z(48)),
        "up_1d": st_set(up, "F32", [64], f32z(64)),
        "up_3d": st_set(up, "F32", [32, 2, 1], f32z(64)),
        "alpha_nan": st_set(alpha, "F32", [], f32([NAN])),
        "alpha_inf": st_set(alpha, "F32", [], f32([INF])),
        "alpha_vector": st_set(alpha, "F32", [2], f32([1.0, 2.0])),
        "up_missing": lambda t: t.pop(up),
        "down_missing": lambda t: t.pop(down),
        "up_i32": st_set(up, "I32", [32, 2], b"\0" * 256),
        "lora_mid": st_set(KM + ".lora_mid.weight", "F32", [2, 2, 3, 3], f32z(36)),
        "bias_on_kohya": st_set(KM + ".lora_up.bias", "F32", [32], f32z(32)),
    }
    for what, fn in lies.items():
        c = fc("fin_" + what)
        st_edit(c.p("a.safetensors"), fn)
        lie_cmds(c, merge, [("a.safetensors",), FINAL])
    # The base lies: an odd row count has no halves to swap; a width the module does not fit.
    for what, shape in (("base_rows_33", [33, 16]), ("base_rows_31", [31, 16]), ("base_rows_16", [16, 16]),
                        ("base_in_15", [32, 15]), ("base_1d", [512])):
        c = fc("fin_" + what)
        n = math.prod(shape)
        st_edit(c.p("b.safetensors"), st_set("norm_out.linear.weight", "F32", shape, f32z(n)))
        if shape[0] in (33, 31):  # the module grown to match: only the swap can fail
            st_edit(c.p("a.safetensors"), st_set(up, "F32", [shape[0], 2], f32z(shape[0] * 2)))
        lie_cmds(c, merge, [("b.safetensors", "a.safetensors"), FINAL], base_lie=True)
    # Other algorithms on the final modulation: the halves of any ΔW swap, or a refusal by module.
    algos = {
        "loha": {KM + ".hada_w1_a": [32, 2], KM + ".hada_w1_b": [2, 16], KM + ".hada_w2_a": [32, 2],
                 KM + ".hada_w2_b": [2, 16]},
        "lokr": {KM + ".lokr_w1": [2, 2], KM + ".lokr_w2": [16, 8]},
        "lokr_lowrank": {KM + ".lokr_w1": [2, 2], KM + ".lokr_w2_a": [16, 2], KM + ".lokr_w2_b": [2, 8]},
        "dora": {KM + ".dora_scale": [32, 1]},
        "dora_in": {KM + ".dora_scale": [1, 16]},
        "full_diff": {KM + ".diff": [32, 16]},
        "ia3": {KM + ".weight": [32]},
    }
    for what, add in algos.items():
        c = fc("fin_algo_" + what)

        def fn(t, add=add, what=what):
            if what not in ("dora", "dora_in"):
                t.pop(up), t.pop(down)
            for k, sh in add.items():
                t[k] = ("F32", sh, f32([0.01 * (i % 7 - 3) for i in range(math.prod(sh))]))
        st_edit(c.p("a.safetensors"), fn)
        either_cmds(c, merge)
    # Other algorithms with the wrong row count on the final modulation must be refused.
    c = fc("fin_algo_loha_rows_33")
    st_edit(c.p("a.safetensors"), lambda t: (t.pop(up), t.pop(down), [t.__setitem__(k, ("F32", sh, f32z(math.prod(sh)))) for k, sh in
            {KM + ".hada_w1_a": [33, 2], KM + ".hada_w1_b": [2, 16], KM + ".hada_w2_a": [33, 2], KM + ".hada_w2_b": [2, 16]}.items()]))
    lie_cmds(c, merge, [("a.safetensors",), FINAL])
    # diffusers/ai-toolkit names on the BFL base: a lora_B bias, odd rows, a wrong in-width.
    aitk = {
        "bias": st_set("transformer.norm_out.linear.lora_B.bias", "F32", [32], f32z(32)),
        "bias_rows_33": st_set("transformer.norm_out.linear.lora_B.bias", "F32", [33], f32z(33)),
        "b_rows_33": st_set("transformer.norm_out.linear.lora_B.weight", "F32", [33, 2], f32z(66)),
        "a_in_15": st_set("transformer.norm_out.linear.lora_A.weight", "F32", [2, 15], f32z(30)),
        "proj_out_bias": st_set("transformer.proj_out.lora_B.bias", "F32", [4], f32z(4)),
    }
    for base in ("bfl_base", "base"):
        for what, fn in aitk.items():
            c = fc(f"aitk_{what}_on_{base}", base=FF + base + ".safetensors", adapter=FF + "aitk.safetensors")
            st_edit(c.p("a.safetensors"), fn)
            lie_cmds(c, merge, [("a.safetensors",), FINAL + ("proj_out", "final_layer.linear")])
    # Two modules landing on the same tensor: kohya and dotted names of one module, kohya and
    # the diffusers module it maps to.
    twins = {
        "kohya_and_dotted": ("diffusion_model.final_layer.adaLN_modulation.1.lora_A.weight",
                             "diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight"),
        "kohya_and_diffusers": ("transformer.norm_out.linear.lora_A.weight", "transformer.norm_out.linear.lora_B.weight"),
        "kohya_and_peft_bfl": ("base_model.model.final_layer.adaLN_modulation.1.lora_A.weight",
                               "base_model.model.final_layer.adaLN_modulation.1.lora_B.weight"),
        "kohya_and_kohya_diffusers": ("lora_transformer_norm_out_linear.lora_down.weight",
                                      "lora_transformer_norm_out_linear.lora_up.weight"),
    }
    for what, (a, b) in twins.items():
        for base in ("base", "bfl_base"):
            c = fc(f"fin_twin_{what}_on_{base}", base=FF + base + ".safetensors")

            def fn(t, a=a, b=b):
                t[a] = t[down]
                t[b] = t[up]
            st_edit(c.p("a.safetensors"), fn)
            lie_cmds(c, merge, [("a.safetensors",), FINAL])


@case
def flux_fused_layouts():
    merge = ["merge", "--base", "b.safetensors", "--adapter", "a.safetensors", "--out", "o.safetensors"]
    Q = "lora_unet_double_blocks_0_img_attn_qkv"
    L1 = "lora_unet_single_blocks_0_linear1"

    def dc(name, base, adapter):
        return Case("r5_" + name, (DF + base, "b.safetensors"), (DF + adapter, "a.safetensors"))
    # img_attn.qkv whose rows do not split in three (or split into the wrong size).
    for rows in (47, 49, 51, 96, 3):
        c = dc(f"qkv_up_rows_{rows}", "flux_base.safetensors", "flux_kohya.safetensors")
        st_edit(c.p("a.safetensors"), st_set(Q + ".lora_up.weight", "F32", [rows, 4], f32z(rows * 4)))
        lie_cmds(c, merge, [("a.safetensors",), ("img_attn", "to_q", "attn")])
    for what, fn in {
        "qkv_down_in_15": st_set(Q + ".lora_down.weight", "F32", [4, 15], f32z(60)),
        "qkv_rank_5": st_set(Q + ".lora_down.weight", "F32", [5, 16], f32z(80)),
        "qkv_alpha_nan": st_set(Q + ".alpha", "F32", [], f32([NAN])),
        "txt_qkv_rows_50": st_set("lora_unet_double_blocks_0_txt_attn_qkv.lora_up.weight", "F32", [50, 2], f32z(100)),
        "img_mod_rows_95": st_set("lora_unet_double_blocks_0_img_mod_lin.lora_up.weight", "F32", [95, 2], f32z(190)),
        "linear2_in_79": st_set("lora_unet_single_blocks_0_linear2.lora_down.weight", "F32", [2, 79], f32z(158)),
    }.items():
        c = dc(what, "flux_base.safetensors", "flux_kohya.safetensors")
        st_edit(c.p("a.safetensors"), fn)
        lie_cmds(c, merge, [("a.safetensors",), ("qkv", "img_mod", "linear2", "attn", "norm1", "proj_out")])
    # The split (rank 3 × 2) kohya qkv: rows that do not split; a rank that does not split in
    # three is a fused LoRA like any other (ΔW = up·down, cut into q, k, v by rows).
    c = dc("split_rows_45", "flux_base.safetensors", "flux_kohya_split.safetensors")
    st_edit(c.p("a.safetensors"), st_set(Q + ".lora_up.weight", "F32", [45, 6], f32z(270)))
    lie_cmds(c, merge, [("a.safetensors",), ("qkv", "attn")])
    c = dc("split_rank_5", "flux_base.safetensors", "flux_kohya_split.safetensors")
    st_edit(c.p("a.safetensors"), lambda t: (t.__setitem__(Q + ".lora_down.weight", ("F32", [5, 16], f32z(80))),
                                             t.__setitem__(Q + ".lora_up.weight", ("F32", [48, 5], f32z(240)))))
    either_cmds(c, merge)
    # linear1 (q, k, v and the MLP in one): rows that do not hold 3 × 16 + 64.
    for rows in (111, 113, 48):
        c = dc(f"linear1_rows_{rows}", "flux_base.safetensors", "flux_linear1.safetensors")
        st_edit(c.p("a.safetensors"), st_set(L1 + ".lora_up.weight", "F32", [rows, 4], f32z(rows * 4)))
        lie_cmds(c, merge, [("a.safetensors",), ("linear1", "attn", "proj_mlp")])
    # diffusers names onto the BFL base: fused tensors of a row count that does not split.
    for tensor, rows in (("double_blocks.0.img_attn.qkv.weight", 47), ("double_blocks.0.img_attn.qkv.weight", 51),
                         ("double_blocks.0.txt_attn.qkv.weight", 49), ("single_blocks.0.linear1.weight", 111),
                         ("single_blocks.0.linear1.weight", 96)):
        c = dc(f"bfl_{tensor.split('.')[2]}_{tensor.split('.')[3]}_{rows}", "flux_bfl_base.safetensors", "flux_aitk.safetensors")
        st_edit(c.p("b.safetensors"), st_set(tensor, "F32", [rows, 16], f32z(rows * 16)))
        # The adapter has `to_k` alone on `img_attn.qkv`: a middle part, which needs a fused
        # tensor of exactly three parts (`layouts.rs` checks `total = 3·out` since round 5; it
        # was counted "known" before).
        lie_cmds(c, merge, [("b.safetensors", "a.safetensors"), ("qkv", "linear1", "attn", "to_q", "proj_mlp")],
                 base_lie=True)
    # XLabs names: a qkv whose rows do not split; kohya names for Wan with odd rows.
    c = dc("xlabs_qkv_rows_47", "flux_base.safetensors", "flux_xlabs.safetensors")
    st_edit(c.p("a.safetensors"), st_set("diffusion_model.double_blocks.0.processor.qkv_lora1.up.weight", "F32", [47, 2],
                                         f32z(94)))
    lie_cmds(c, merge, [("a.safetensors",), ("qkv", "attn")])
    for what, fn in {
        "wan_up_rows_15": st_set("lora_unet_blocks_0_self_attn_q.lora_up.weight", "F32", [15, 2], f32z(30)),
        "wan_down_in_17": st_set("lora_unet_blocks_0_ffn_0.lora_down.weight", "F32", [2, 17], f32z(34)),
        "wan_twin": lambda t: (t.__setitem__("diffusion_model.blocks.0.self_attn.q.lora_A.weight",
                                             t["lora_unet_blocks_0_self_attn_q.lora_down.weight"]),
                               t.__setitem__("diffusion_model.blocks.0.self_attn.q.lora_B.weight",
                                             t["lora_unet_blocks_0_self_attn_q.lora_up.weight"])),
        "wan_bias": st_set("diffusion_model.blocks.0.self_attn.q.lora_B.bias", "F32", [16], f32z(16)),
    }.items():
        c = dc(what, "wan_base.safetensors", "wan_musubi.safetensors")
        st_edit(c.p("a.safetensors"), fn)
        lie_cmds(c, merge, [("a.safetensors",), ("self_attn", "ffn", "attn1", "blocks.0")])


# ---------------------------------------------------------------- quantized bases whose config lies
QP = "model.layers.0.self_attn.q_proj"


def qc(j):
    return j["quantization_config"]


def ct_group(j, name="group_q_proj"):
    return qc(j)["config_groups"][name]["weights"]


@case
def quant_config_lies():
    # (fixture, lie, verdict): "refuse" where the stored tensors contradict the lie (their
    # shapes follow from bits / group size / block structure), "either" where the lie describes
    # tensors of the same shapes (it cannot be seen; a merge or a clean refusal), or where lorakit
    # reads the layout from the stored tensors by design: no compressed-tensors group or two
    # selecting a module (ct_config.rs: nothing to compare), an FP8 config without
    # weight_block_size (the scale grid tiles the weight, fp8.rs), bitsandbytes load_in_4bit /
    # load_in_8bit (the stored quant_state / SCB say which; as round 1 accepted for the quant
    # type), a GPTQ `bits` given as a numeric string (gptq.rs reads it).
    cfg = {
        "gptq4_bits_8": ("gptq4_v1", lambda j: qc(j).update(bits=8), "refuse"),
        "gptq4_bits_2": ("gptq4_v1", lambda j: qc(j).update(bits=2), "refuse"),
        "gptq4_bits_3": ("gptq4_v1", lambda j: qc(j).update(bits=3), "refuse"),
        "gptq4_bits_str": ("gptq4_v1", lambda j: qc(j).update(bits="4"), "either"),  # numeric strings are read
        "gptq4_group_64": ("gptq4_v1", lambda j: qc(j).update(group_size=64), "refuse"),
        "gptq4_group_16": ("gptq4_v1", lambda j: qc(j).update(group_size=16), "refuse"),
        "gptq4_group_minus1": ("gptq4_v1", lambda j: qc(j).update(group_size=-1), "refuse"),
        "gptq4_group_minus2": ("gptq4_v1", lambda j: qc(j).update(group_size=-2), "refuse"),
        "gptq4_group_float": ("gptq4_v1", lambda j: qc(j).update(group_size=32.5), "refuse"),
        "gptq4_desc_act": ("gptq4_v1", lambda j: qc(j).update(desc_act=True), "either"),
        "gptq4_format_v2": ("gptq4_v1", lambda j: qc(j).update(checkpoint_format="gptq_v2", format="gptq_v2"), "either"),
        "gptq8_bits_4": ("gptq8_v2", lambda j: qc(j).update(bits=4), "refuse"),
        "gptq8_group_32": ("gptq8_v2", lambda j: qc(j).update(group_size=32), "refuse"),
        "gptq3_bits_4": ("gptq3_act", lambda j: qc(j).update(bits=4), "refuse"),
        "gptq3_group_64": ("gptq3_act", lambda j: qc(j).update(group_size=64), "refuse"),
        "awq_bits_8": ("awq4", lambda j: qc(j).update(bits=8), "refuse"),
        "awq_bits_3": ("awq4", lambda j: qc(j).update(bits=3), "refuse"),
        "awq_group_64": ("awq4", lambda j: qc(j).update(group_size=64), "refuse"),
        "awq_group_16": ("awq4", lambda j: qc(j).update(group_size=16), "refuse"),
        "awq_gemv": ("awq4", lambda j: qc(j).update(version="gemv"), "refuse"),
        "awq_no_zero_point": ("awq4", lambda j: qc(j).update(zero_point=False), "either"),
        "ct_bits_8": ("ct_pack", lambda j: ct_group(j).update(num_bits=8), "refuse"),
        "ct_bits_2": ("ct_pack", lambda j: ct_group(j).update(num_bits=2), "refuse"),
        "ct_group_64": ("ct_pack", lambda j: ct_group(j).update(group_size=64), "refuse"),
        "ct_group_16": ("ct_pack", lambda j: ct_group(j).update(group_size=16), "refuse"),
        "ct_strategy_channel": ("ct_pack", lambda j: ct_group(j).update(strategy="channel"), "refuse"),
        "ct_strategy_tensor": ("ct_pack", lambda j: ct_group(j).update(strategy="tensor"), "refuse"),
        "ct_strategy_block": ("ct_pack", lambda j: ct_group(j).update(strategy="block", block_structure=[32, 32]), "refuse"),
        "ct_type_float": ("ct_pack", lambda j: ct_group(j).update(type="float", num_bits=8), "refuse"),
        "ct_symmetric_false": ("ct_pack", lambda j: ct_group(j).update(symmetric=False), "either"),
        "ct_k_channel_to_group": ("ct_pack", lambda j: ct_group(j, "group_k_proj").update(strategy="group", group_size=32),
                                  "refuse"),
        "ct_no_group_for_q": ("ct_pack", lambda j: qc(j)["config_groups"].pop("group_q_proj"), "either"),
        "ct_two_groups_for_q": ("ct_pack", lambda j: qc(j)["config_groups"]["group_v_proj"].update(targets=["re:.*_proj$"]),
                                "either"),
        "block_32": ("ct_block128", lambda j: ct_group(j, "group_0").update(block_structure=[32, 32]), "refuse"),
        "block_128_32": ("ct_block128", lambda j: ct_group(j, "group_0").update(block_structure=[128, 32]), "refuse"),
        "block_64": ("ct_block128", lambda j: ct_group(j, "group_0").update(block_structure=[64, 64]), "either"),
        "block_strategy_channel": ("ct_block128", lambda j: ct_group(j, "group_0").update(strategy="channel"), "refuse"),
        "block_bits_4": ("ct_block128", lambda j: ct_group(j, "group_0").update(num_bits=4), "refuse"),
        "fp8_block_16": ("fp8_block", lambda j: qc(j).update(weight_block_size=[16, 16]), "refuse"),
        "fp8_block_64": ("fp8_block", lambda j: qc(j).update(weight_block_size=[64, 64]), "refuse"),
        "fp8_block_32_64": ("fp8_block", lambda j: qc(j).update(weight_block_size=[32, 64]), "refuse"),
        "fp8_block_negative": ("fp8_block", lambda j: qc(j).update(weight_block_size=[-32, 32]), "refuse"),
        "fp8_block_str": ("fp8_block", lambda j: qc(j).update(weight_block_size=["32", 32]), "refuse"),
        "fp8_block_none": ("fp8_block", lambda j: qc(j).pop("weight_block_size"), "either"),
        "ct_fp8_q_tensor": ("ct_fp8", lambda j: ct_group(j).update(strategy="tensor"), "refuse"),
        "ct_fp8_q_block": ("ct_fp8", lambda j: ct_group(j).update(strategy="block", block_structure=[32, 32]), "refuse"),
        "int8_says_4bit": ("int8", lambda j: qc(j).update(load_in_8bit=False, load_in_4bit=True, _load_in_8bit=False,
                                                          _load_in_4bit=True), "either"),
        "nf4_says_8bit": ("nf4", lambda j: qc(j).update(load_in_8bit=True, load_in_4bit=False, _load_in_8bit=True,
                                                        _load_in_4bit=False), "either"),
        "nf4_says_double_quant": ("nf4", lambda j: qc(j).update(bnb_4bit_use_double_quant=True), "either"),
        "nf4_dq_says_single": ("nf4_dq", lambda j: qc(j).update(bnb_4bit_use_double_quant=False), "either"),
        "fp4_says_nf4": ("fp4", lambda j: qc(j).update(bnb_4bit_quant_type="nf4"), "either"),
    }
    for what, (fx, fn, verdict) in cfg.items():
        for cmd in ("dequantize", "merge", "keep"):
            if cmd == "keep" and verdict != "refuse":
                continue
            c = Case(f"r5_qcfg_{what}_{cmd}", (f"quant/{fx}", "base"), ("llama/adapters/qv_r8", "qv"))
            try:
                c.json_edit("base/config.json", lambda j, fn=fn: (fn(j), None)[1])
            except KeyError as e:
                violation(c.name, "harness: config layout differs", repr(e))
                continue
            argv = (["dequantize", "base", "--out", "out"] if cmd == "dequantize" else
                    ["merge", "--base", "base", "--adapter", "qv", "--out", "out"])
            if cmd == "keep":
                # Requantized in the base's format (or `--quant keep` refused for it): refused.
                run(c, argv + ["--quant", "keep"], mention=[("config.json", "model.safetensors", "--quant")])
            elif verdict == "refuse":
                run(c, argv, mention=[("config.json", "model.safetensors")])
            else:
                either(c, argv)
        either(c, ["inspect", "base"])


@case
def quant_scale_lies():
    nan16, nanbf, nan32 = b"\x00\x7e", b"\xc0\x7f", b"\x00\x00\xc0\x7f"
    lies = {
        "gptq8_scales_nan": ("gptq8_v2", st_set(QP + ".scales", "F16", [1, 64], nan16 * 64)),
        "gptq8_scales_t": ("gptq8_v2", st_set(QP + ".scales", "F16", [64, 1], b"\x00\x3c" * 64)),
        "gptq3_scales_t": ("gptq3_act", st_set(QP + ".scales", "F16", [64, 2], b"\x00\x3c" * 128)),
        "gptq3_scales_one_nan": ("gptq3_act", lambda t: t.__setitem__(QP + ".scales", ("F16", [2, 64], nan16 + t[QP + ".scales"][2][2:]))),
        "gptq3_qzeros_t": ("gptq3_act", st_set(QP + ".qzeros", "I32", [6, 2], b"\0" * 48)),
        "awq_scales_nan": ("awq4", st_set(QP + ".scales", "F16", [2, 64], nan16 * 128)),
        "awq_scales_inf_one": ("awq4", lambda t: t.__setitem__(QP + ".scales", ("F16", [2, 64], b"\x00\x7c" + t[QP + ".scales"][2][2:]))),
        "awq_scales_t": ("awq4", st_set(QP + ".scales", "F16", [64, 2], b"\x00\x3c" * 128)),
        "ct_pack_scale_nan": ("ct_pack", st_set(QP + ".weight_scale", "BF16", [64, 2], nanbf * 128)),
        "ct_pack_scale_t": ("ct_pack", st_set(QP + ".weight_scale", "BF16", [2, 64], b"\x80\x3f" * 128)),
        "ct_pack_scale_f32": ("ct_pack", st_set(QP + ".weight_scale", "F32", [64, 2], f32([1.0] * 128))),
        "ct_pack_packed_rows": ("ct_pack", lambda t: t.__setitem__(QP + ".weight_packed", ("I32", [32, 8], t[QP + ".weight_packed"][2][:1024]))),
        "block_scale_big": ("ct_block128", st_set(QP + ".weight_scale", "BF16", [2, 2], b"\x80\x3f" * 4)),
        "block_scale_nan": ("ct_block128", st_set(QP + ".weight_scale", "BF16", [1, 1], nanbf)),
        "fp8_scale_t": ("fp8_block", st_set(QP + ".weight_scale_inv", "F32", [4, 1], f32([1.0] * 4))),
        "fp8_scale_one_nan": ("fp8_block", st_set(QP + ".weight_scale_inv", "F32", [2, 2], f32([1.0, NAN, 1.0, 1.0]))),
        "fp8_scale_neg_inf": ("fp8_block", st_set(QP + ".weight_scale_inv", "F32", [2, 2], f32([1.0, -INF, 1.0, 1.0]))),
        "ct_fp8_scale_nan": ("ct_fp8", st_set(QP + ".weight_scale", "BF16", [64, 1], nanbf * 64)),
        "ct_fp8_scale_1d": ("ct_fp8", st_set(QP + ".weight_scale", "BF16", [64], b"\x80\x3f" * 64)),
        "nf4dq_nested_absmax_nan": ("nf4_dq", st_set(QP + ".weight.nested_absmax", "F32", [1], nan32)),
        "nf4dq_nested_map_short": ("nf4_dq", st_set(QP + ".weight.nested_quant_map", "F32", [16], f32([0.0] * 16))),
        "nf4dq_absmax_f32": ("nf4_dq", st_set(QP + ".weight.absmax", "F32", [64], f32([1.0] * 64))),
        "fp4_absmax_nan": ("fp4", st_set(QP + ".weight.absmax", "F32", [64], nan32 * 64)),
        "fp4_quant_map_nan": ("fp4", st_set(QP + ".weight.quant_map", "F32", [16], nan32 * 16)),
        "int8_scb_2d": ("int8", st_set(QP + ".SCB", "F32", [64, 1], f32([1.0] * 64))),
        "int8_scb_inf": ("int8", st_set(QP + ".SCB", "F32", [64], f32([INF] + [1.0] * 63))),
        "comfy_scale_nan": ("comfy_fp8", st_set(QP + ".scale_weight", "F32", [], nan32)),
        "comfy_scale_neg": ("comfy_fp8", st_set(QP + ".scale_weight", "F32", [], f32([-1.0]))),
    }
    for what, (fx, fn) in lies.items():
        for cmd in ("dequantize", "merge"):
            c = Case(f"r5_qscale_{what}_{cmd}", (f"quant/{fx}", "base"), ("llama/adapters/qv_r8", "qv"))
            st_edit(c.p("base/model.safetensors"), fn)
            argv = (["dequantize", "base", "--out", "out"] if cmd == "dequantize" else
                    ["merge", "--base", "base", "--adapter", "qv", "--out", "out"])
            if what in ("comfy_scale_neg", "ct_pack_scale_f32", "ct_fp8_scale_1d", "int8_scb_2d"):
                # A negative FP8 scale flips signs; an F32 scale is cast; a [rows] vector or a
                # [rows, 1] SCB is one scale per row, as fp8.rs / int8.rs read them.
                either(c, argv)
                continue
            run(c, argv, mention=[("model.safetensors", "config.json"), QP])
        either(c, ["inspect", "base"])
        either(c, ["diff", "base", "base"], refusals=(1, 2))
