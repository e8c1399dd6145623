"""Cases of fuzz/hostile_round.py over the newer formats and the path rules: quantized bases
(GPTQ, AWQ, bitsandbytes, FP8, compressed-tensors), LyCORIS files of every algorithm, PEFT
AdaLoRA/IA3/OFT/LoHa/LoKr folders, GGUF split bases and adapters, outputs onto inputs, output
folders that hold files, read-only and full disks, signals."""
from hostile_lib import *  # noqa: F401,F403


# ---------------------------------------------------------------- quantized bases
Q = "model.layers.0.self_attn.q_proj"


def i32s(vals):
    return struct.pack("<%di" % len(vals), *vals)


@case
def quantized_bases():
    def set_(name, dt, sh, raw=None):
        return lambda t: t.__setitem__(name, (dt, sh, t[name][2] if raw is None else raw))
    lies = {
        "gptq4_v1": {
            "qweight_rows": lambda t: t.__setitem__(Q + ".qweight", ("I32", [4, 64], t[Q + ".qweight"][2][:4 * 64 * 4])),
            "qweight_cols": lambda t: t.__setitem__(Q + ".qweight", ("I32", [8, 32], t[Q + ".qweight"][2][:8 * 32 * 4])),
            "scales_rows": lambda t: t.__setitem__(Q + ".scales", ("F16", [1, 64], t[Q + ".scales"][2][:128])),
            "g_idx_out_of_range": lambda t: t.__setitem__(Q + ".g_idx", ("I32", [64], i32s([0] * 63 + [7]))),
            "g_idx_negative": lambda t: t.__setitem__(Q + ".g_idx", ("I32", [64], i32s([0] * 63 + [-1]))),
            "g_idx_short": lambda t: t.__setitem__(Q + ".g_idx", ("I32", [32], t[Q + ".g_idx"][2][:128])),
            "g_idx_float": lambda t: t.__setitem__(Q + ".g_idx", ("F32", [64], t[Q + ".g_idx"][2])),
            "qzeros_missing": lambda t: t.pop(Q + ".qzeros"),
            "scales_nan": lambda t: t.__setitem__(Q + ".scales", ("F16", [2, 64], b"\x00\x7e" * 128)),
            "scales_inf": lambda t: t.__setitem__(Q + ".scales", ("F16", [2, 64], b"\x00\x7c" * 128)),
            "qweight_f32": lambda t: t.__setitem__(Q + ".qweight", ("F32", [8, 64], t[Q + ".qweight"][2])),
        },
        "awq4": {
            "qweight_rows": lambda t: t.__setitem__(Q + ".qweight", ("I32", [32, 8], t[Q + ".qweight"][2][:32 * 8 * 4])),
            "scales_cols": lambda t: t.__setitem__(Q + ".scales", ("F16", [2, 32], t[Q + ".scales"][2][:128])),
            "qzeros_cols": lambda t: t.__setitem__(Q + ".qzeros", ("I32", [2, 4], t[Q + ".qzeros"][2][:32])),
        },
        "int8": {
            "scb_short": lambda t: t.__setitem__(Q + ".SCB", ("F32", [32], t[Q + ".SCB"][2][:128])),
            "scb_nan": lambda t: t.__setitem__(Q + ".SCB", ("F32", [64], b"\x00\x00\xc0\x7f" * 64)),
            "weight_f32": lambda t: t.__setitem__(Q + ".weight", ("U8", [64, 64], t[Q + ".weight"][2])),
        },
        "nf4": {
            "absmax_short": lambda t: t.__setitem__(Q + ".weight.absmax", ("F32", [8], t[Q + ".weight.absmax"][2][:32])),
            "quant_map_short": lambda t: t.__setitem__(Q + ".weight.quant_map", ("F32", [8], t[Q + ".weight.quant_map"][2][:32])),
            "weight_short": lambda t: t.__setitem__(Q + ".weight", ("U8", [1024, 1], t[Q + ".weight"][2][:1024])),
            "quant_state_garbage": "qs",
            "absmax_nan": lambda t: t.__setitem__(Q + ".weight.absmax", ("F32", [64], b"\x00\x00\xc0\x7f" * 64)),
        },
        "fp8_e5m2": {
            "scale_grid": lambda t: t.__setitem__(Q + ".weight_scale_inv", ("F32", [1, 1], t[Q + ".weight_scale_inv"][2][:4])),
            "scale_nan": lambda t: t.__setitem__(Q + ".weight_scale_inv", ("F32", [2, 2], b"\x00\x00\xc0\x7f" * 4)),
            "weight_nan": lambda t: t.__setitem__(Q + ".weight", ("F8_E5M2", [64, 64], b"\x7f" * 4096)),
        },
        "ct_pack": {
            "weight_shape_lies": lambda t: t.__setitem__(Q + ".weight_shape", ("I64", [2], struct.pack("<2q", 64, 4096))),
            "weight_shape_negative": lambda t: t.__setitem__(Q + ".weight_shape", ("I64", [2], struct.pack("<2q", -64, 64))),
            "scale_cols": lambda t: t.__setitem__(Q + ".weight_scale", ("BF16", [64, 1], t[Q + ".weight_scale"][2][:128])),
        },
        "ct_fp8": {
            "scale_rows": lambda t: t.__setitem__(Q + ".weight_scale", ("BF16", [32, 1], t[Q + ".weight_scale"][2][:64])),
        },
        "comfy_fp8": {
            "scale_weight_vec": lambda t: t.__setitem__(Q + ".scale_weight", ("F32", [2], f32([1.0, 2.0]))),
            "scale_weight_inf": lambda t: t.__setitem__(Q + ".scale_weight", ("F32", [], b"\x00\x00\x80\x7f")),
        },
    }
    for fx, table in lies.items():
        for what, lie in table.items():
            for cmd in ("dequantize", "merge"):
                c = Case(f"quant_{fx}_{what}_{cmd}", (f"quant/{fx}", "base"), (QV, "qv"))
                f = c.p("base/model.safetensors")
                if lie == "qs":
                    k = key_like(f, Q + ".weight.quant_state")
                    st_edit(f, lambda t: t.__setitem__(k, ("U8", [5], b"{\"x\":")))
                else:
                    st_edit(f, lie)
                argv = (["dequantize", "base", "--out", "out"] if cmd == "dequantize" else
                        ["merge", "--base", "base", "--adapter", "qv", "--out", "out"])
                # The weights' file, or config.json where the lie contradicts the config.
                run(c, argv, mention=[("model.safetensors", "config.json"), Q])
    cfg_lies = {
        "gptq_bits_5": ("gptq4_v1", lambda j: j["quantization_config"].update(bits=5)),
        "gptq_group_0": ("gptq4_v1", lambda j: j["quantization_config"].update(group_size=0)),
        "gptq_group_huge": ("gptq4_v1", lambda j: j["quantization_config"].update(group_size=2**40)),
        "gptq_qc_not_object": ("gptq4_v1", lambda j: j.update(quantization_config=[1])),
        "awq_version_unknown": ("awq4", lambda j: j["quantization_config"].update(version="nope")),
        "ct_groups_not_object": ("ct_pack", lambda j: j["quantization_config"].update(config_groups=[])),
        "ct_bad_regex": ("ct_pack", lambda j: [g.update(targets=["re:("]) for g in j["quantization_config"]["config_groups"].values()]),
        "ct_num_bits_0": ("ct_pack", lambda j: [g["weights"].update(num_bits=0) for g in j["quantization_config"]["config_groups"].values()]),
        "ct_group_size_0": ("ct_pack", lambda j: [g["weights"].update(group_size=0) for g in j["quantization_config"]["config_groups"].values()]),
        "fp8_block_zero": ("fp8_e5m2", lambda j: j["quantization_config"].update(weight_block_size=[0, 32])),
        "fp8_block_one_dim": ("fp8_e5m2", lambda j: j["quantization_config"].update(weight_block_size=[32])),
        "bnb_quant_type_unknown": ("nf4", lambda j: j["quantization_config"].update(bnb_4bit_quant_type="nf5")),
    }
    for what, (fx, fn) in cfg_lies.items():
        for cmd in ("dequantize", "merge"):
            c = Case(f"quantcfg_{what}_{cmd}", (f"quant/{fx}", "base"), (QV, "qv"))
            c.json_edit("base/config.json", lambda j, fn=fn: (fn(j), None)[1])
            argv = (["dequantize", "base", "--out", "out"] if cmd == "dequantize" else
                    ["merge", "--base", "base", "--adapter", "qv", "--out", "out"])
            if what == "bnb_quant_type_unknown":
                # bitsandbytes reads the quant type from the stored quant_state, not config.json.
                run_either(c, argv)
            else:
                run(c, argv, mention=[("config.json", "model.safetensors")])
    # dequantize onto itself; dequantize of a float model.
    c = Case("dequantize_out_is_model")
    c.copy("quant/nf4", "base")
    run(c, ["dequantize", "base", "--out", "base/"], mention=["also an input"])
    c = Case("dequantize_out_is_model_file_symlink")
    c.copy("quant/nf4", "base")
    os.symlink("base/model.safetensors", c.p("o.safetensors"))
    run(c, ["dequantize", "base", "--out", "o.safetensors"], mention=["o.safetensors"])


# ---------------------------------------------------------------- LyCORIS files of every algorithm
LYCO = ["lycoris/" + n for n in ("dora_out", "full", "locon_tucker", "loha", "loha_dora_in", "loha_tucker", "lokr",
                                  "lokr_both_tucker", "lokr_full")] + \
       ["lycoris_w0/" + n for n in ("boft", "boft_rescale", "glora", "ia3", "ia3_input", "lokr_norm", "oft",
                                     "oft_rescale")]


@case
def lycoris_lies():
    for fx in LYCO:
        algo = fx.split("/")[1]
        src = os.path.join(FX, fx + ".safetensors")
        t0, _ = st_tensors(src)
        mod = sorted(t0)[0].rsplit(".", 1)[0]
        names = [k for k in t0 if k.startswith(mod + ".")]
        for k in names:
            suffix = k[len(mod) + 1:]
            dt, sh, raw = t0[k]
            lies = {"drop": lambda t, k=k: t.pop(k)}
            if sh:
                lies["grow"] = lambda t, k=k, sh=sh, raw=raw: t.__setitem__(k, ("F32", [sh[0] + 1] + sh[1:],
                                                                                raw + b"\0" * (len(raw) // sh[0])))
            if dt == "F32" and len(raw) >= 4:
                lies["nan"] = lambda t, k=k, raw=raw: t.__setitem__(k, ("F32", t[k][1], b"\x00\x00\xc0\x7f" + raw[4:]))
            for what, lie in lies.items():
                if what == "drop" and suffix in ("alpha", "on_input", "diff_b", "rescale", "dora_scale"):
                    continue  # optional tensors: dropping one is a valid file
                for cmd in ("merge", "resize", "convert", "combine"):
                    c = Case(f"lyco_{algo}_{suffix}_{what}_{cmd}")
                    c.copy(os.path.dirname(fx) + "/base.safetensors", "base.safetensors")
                    f = c.copy(fx + ".safetensors", "ad.safetensors")
                    st_edit(f, lie)
                    argv = {
                        "merge": ["merge", "--base", "base.safetensors", "--adapter", "ad.safetensors", "--out", "o.safetensors"],
                        "resize": ["resize", "ad.safetensors", "--rank", "2", "--base", "base.safetensors", "--out", "o.safetensors"],
                        "convert": ["convert", "ad.safetensors", "--to", "peft", "--out", "o"],
                        "combine": ["combine", "--adapter", "ad.safetensors", "--adapter", "ad.safetensors", "--method",
                                    "cat", "--base", "base.safetensors", "--out", "o.safetensors"],
                    }[cmd]
                    run(c, argv, mention=["ad.safetensors"])


# ---------------------------------------------------------------- PEFT folders of the newer formats
PEFT_FOLDERS = {
    "adalora": ("llama/adapters/adalora", BASE),
    "gpt2_ia3": ("peft_w0/gpt2_ia3", "gpt2/base"),
    "oft": ("peft_w0/oft", None),
    "loha": ("peft_lycoris/loha", None),
    "lokr": ("peft_lycoris/lokr", None),
}


@case
def peft_format_lies():
    for name, (fx, base) in PEFT_FOLDERS.items():
        src = os.path.join(FX, fx, "adapter_model.safetensors")
        t0, _ = st_tensors(src)
        first = sorted(t0)[0]
        mod = first.rsplit(".", 1)[0] if not first.endswith(".weight") else first.rsplit(".", 2)[0]
        names = [k for k in t0 if k.startswith(mod + ".")]
        cfg = json.load(open(os.path.join(FX, fx, "adapter_config.json")))
        if base is None:
            base = os.path.join(fx, "..", "base_" + name)  # resolved below
        for k in names:
            dt, sh, raw = t0[k]
            lies = {"drop": lambda t, k=k: t.pop(k)}
            if sh and sh[0] > 0:
                lies["grow"] = lambda t, k=k, sh=sh, raw=raw: t.__setitem__(k, (dt, [sh[0] + 1] + sh[1:],
                                                                                raw + b"\0" * (len(raw) // sh[0])))
            if dt == "F32" and len(raw) >= 4:
                lies["inf"] = lambda t, k=k, raw=raw: t.__setitem__(k, ("F32", t[k][1], b"\x00\x00\x80\x7f" + raw[4:]))
            for what, lie in lies.items():
                for cmd in ("inspect", "resize", "convert", "check"):
                    c = Case(f"peftfmt_{name}_{k.rsplit('.', 2)[-2]}{k.rsplit('.', 1)[-1]}_{what}_{cmd}")
                    c.copy(fx, "ad")
                    st_edit(c.p("ad/adapter_model.safetensors"), lie)
                    argv = {"inspect": ["inspect", "ad", "--spectrum"],
                            "resize": ["resize", "ad", "--rank", "1", "--out", "o"],
                            "convert": ["convert", "ad", "--to", "kohya", "--out", "o.safetensors"],
                            "check": ["check", "ad"]}[cmd]
                    run_either(c, argv, refusals=(1, 2) if cmd == "check" else (2,))
        # Config lies specific to the format.
        extra = {
            "adalora": {"init_r_zero": lambda j: j.update(init_r=0), "target_r_huge": lambda j: j.update(target_r=2**40),
                        "peft_type_lora": lambda j: j.update(peft_type="LORA")},
            "gpt2_ia3": {"fan_in_fan_out_off": lambda j: j.update(fan_in_fan_out=False),
                         "ff_not_in_targets": lambda j: j.update(feedforward_modules=["nope"])},
            "oft": {"r_and_block_size": lambda j: j.update(r=2, oft_block_size=5), "block_size_zero": lambda j: j.update(oft_block_size=0, r=0)},
            "loha": {"r_differs": lambda j: j.update(r=5)},
            "lokr": {"decompose_factor_zero": lambda j: j.update(decompose_factor=0), "r_differs": lambda j: j.update(r=5)},
        }[name]
        for what, fn in extra.items():
            for cmd in ("inspect", "convert", "check"):
                c = Case(f"peftcfg_{name}_{what}_{cmd}")
                c.copy(fx, "ad")
                c.json_edit("ad/adapter_config.json", lambda j, fn=fn: (fn(j), None)[1])
                argv = {"inspect": ["inspect", "ad", "--spectrum"],
                        "convert": ["convert", "ad", "--to", "kohya", "--out", "o.safetensors"],
                        "check": ["check", "ad"]}[cmd]
                run_either(c, argv, refusals=(1, 2) if cmd == "check" else (2,))


# ---------------------------------------------------------------- GGUF adapters and split bases
@case
def gguf_cases():
    # A split llama base, written by lorakit from llama_f32.gguf (4 files of <= 100 KB).
    def sc(name):
        c = Case(name)
        c.copy(QV, "qv")
        setup_only(c, ["merge", "--base", os.path.join(FX, "gguf/llama_f32.gguf"), "--adapter", "qv", "--out",
                       "m.gguf", "--max-shard-size", "100KB", "--quiet"])
        return c
    s = [f"m-0000{i}-of-00004.gguf" for i in (1, 2, 3, 4)]
    merge = ["merge", "--base", s[0], "--adapter", "qv", "--out"]
    c = sc("gguf_split_missing_middle")
    os.remove(c.p(s[1]))
    for cmd in (merge + ["o.gguf"], ["inspect", s[0]], ["diff", s[0], s[0]]):
        run(c, cmd, mention=[s[1]])
    c = sc("gguf_split_out_is_a_split")
    run(c, merge + [s[1]], mention=["also an input"])
    c = sc("gguf_split_out_is_a_split_via_symlink")
    os.symlink(s[2], c.p("o.gguf"))
    run(c, merge + ["o.gguf"], mention=["also an input"])
    c = sc("gguf_split_out_split_set_over_input")
    # An output whose own split files would land on the inputs' names.
    run(c, merge + ["m.gguf", "--max-shard-size", "100KB"], mention=["also an input"])
    c = sc("gguf_split_truncated_last")
    b = open(c.p(s[3]), "rb").read()
    open(c.p(s[3]), "wb").write(b[: len(b) - 100])
    run(c, merge + ["o.gguf"], mention=[s[3]])
    c = sc("gguf_split_foreign_shard")
    shutil.copy(os.path.join(FX, "gguf/split-00002-of-00003.gguf"), c.p(s[1]))
    run(c, merge + ["o.gguf"], mention=[s[1]])
    c = sc("gguf_split_shard_swapped")
    os.rename(c.p(s[1]), c.p("t"))
    os.rename(c.p(s[2]), c.p(s[1]))
    os.rename(c.p("t"), c.p(s[2]))
    run(c, merge + ["o.gguf"], mention=[("m-00002-of-00004.gguf", "m-00003-of-00004.gguf")])
    # GGUF adapters given to the adapter commands that do not take them, and onto themselves.
    for cmd in ("resize", "combine", "convert", "eval"):
        c = Case(
            f"ggad_{cmd}",
            ("gguf/llamacpp/hf_qv_r8.q8_0.gguf", "a.gguf"),
            (BASE, "base"),
            (IDS, "ids.safetensors"),
        )
        argv = {"resize": ["resize", "a.gguf", "--rank", "2", "--out", "o"],
                "combine": ["combine", "--adapter", "a.gguf", "--adapter", "a.gguf", "--method", "cat", "--out", "o"],
                "convert": ["convert", "a.gguf", "--to", "gguf", "--out", "a.gguf"],
                "eval": ["eval", "--model", "base", "--adapter", "a.gguf", "--input-ids", "ids.safetensors", "--seq-len",
                         "8", "--device", "cpu"]}[cmd]
        run_either(c, argv)
    c = Case("convert_gguf_out_onto_adapter_symlink")
    c.copy(QV, "qv")
    os.symlink("qv/adapter_model.safetensors", c.p("o.gguf"))
    run(c, ["convert", "qv", "--to", "gguf", "--base", os.path.join(FX, "gguf/llama_f32.gguf"), "--out", "o.gguf"],
        mention=["also an input"])


# ---------------------------------------------------------------- path rules
@case
def path_rules():
    # A sharded base whose index names a shard outside its folder or by an absolute path.
    for what in ("dotdot", "absolute", "index_itself", "config"):
        c = Case(f"index_{what}", ("llama/base_sharded", "base"), (QV, "qv"))
        shutil.copy(c.p("base/model-00002-of-00004.safetensors"), c.p("outside.safetensors"))

        def fn(j, c=c, what=what):
            k = next(k for k, v in j["weight_map"].items() if v == "model-00002-of-00004.safetensors")
            j["weight_map"][k] = {"dotdot": "../outside.safetensors", "absolute": c.p("outside.safetensors"),
                                  "index_itself": "model.safetensors.index.json", "config": "config.json"}[what]
        c.json_edit("base/model.safetensors.index.json", fn)
        for cmd in (["merge", "--base", "base", "--adapter", "qv", "--out", "o"], ["inspect", "base"],
                    ["diff", "base", "base"], ["extract", "--base", "base", "--tuned", "base", "--out", "o", "--rank", "2",
                                               "--device", "cpu"], ["dequantize", "base", "--out", "o"]):
            c2 = Case(f"{c.name}_{cmd[0]}")
            shutil.rmtree(c2.dir)
            shutil.copytree(c.dir, c2.dir)
            run(c2, cmd, mention=[("model.safetensors.index.json", "config.json")])
    # merge --out onto the base through `..`, a trailing slash, a symlinked folder, a hard link.
    for what in ("dotdot", "slash", "symlink_dir", "hardlink_file", "symlink_file", "dot"):
        c = Case(f"merge_out_{what}", (BASE, "base"), (QV, "qv"))
        os.makedirs(c.p("x"))
        out = {"dotdot": "x/../base", "slash": "base/", "symlink_dir": "lb", "hardlink_file": "h.safetensors",
               "symlink_file": "s.safetensors", "dot": "base/."}[what]
        if what == "symlink_dir":
            os.symlink("base", c.p("lb"))
        if what == "hardlink_file":
            os.link(c.p("base/model.safetensors"), c.p("h.safetensors"))
        if what == "symlink_file":
            os.symlink("base/model.safetensors", c.p("s.safetensors"))
        # A file --out for a folder base is refused before the aliasing check; either refusal will do.
        run(c, ["merge", "--base", "base", "--adapter", "qv", "--out", out],
            mention=[("also an input", "must be a folder")])
    # Output commands onto their inputs, for the commands of this round.
    onto = {
        "resize_out_is_adapter": (["resize", "qv", "--rank", "2", "--out", "qv/"], None),
        "resize_out_through_missing_folder": (["resize", "qv", "--rank", "2", "--out", "nox/../qv"], None),
        "merge_out_through_missing_folder": (["merge", "--base", "base", "--adapter", "qv", "--out", "nox/../base"], None),
        "dequantize_out_through_missing_folder": (["dequantize", "nf4", "--out", "nox/sub/../../nf4"], "nf4"),
        "resize_kohya_out_is_file": (["resize", "k.safetensors", "--rank", "2", "--out", "./k.safetensors"], None),
        "combine_out_is_second": (["combine", "--adapter", "qv", "--adapter", "qv2", "--method", "cat", "--out", "x/../qv2"], None),
        "combine_out_hardlink": (["combine", "--adapter", "k.safetensors", "--adapter", "qv", "--method", "cat",
                                  "--format", "kohya", "--out", "hk.safetensors"], "hard"),
        "convert_out_is_input": (["convert", "k.safetensors", "--to", "kohya", "--out", "k.safetensors"], None),
        "convert_peft_out_is_input": (["convert", "qv", "--to", "peft", "--out", "qv"], None),
        "eval_logits_onto_ids": (["eval", "--model", "base", "--input-ids", "ids.safetensors", "--seq-len", "8",
                                  "--device", "cpu", "--logits", "ids.safetensors"], None),
        "eval_logits_onto_model_symlink": (["eval", "--model", "base", "--input-ids", "ids.safetensors", "--seq-len", "8",
                                            "--device", "cpu", "--logits", "sm.safetensors"], "symlink_model"),
        "diff_a_equals_b_json": (["diff", "qv", "qv/", "--json"], "ok"),
        "inspect_plot_onto_config": (["inspect", "qv", "--spectrum", "--plot", "qv/adapter_config.json"], None),
        "extract_out_is_tuned_folder": (["extract", "--base", "base", "--tuned", "tuned", "--out", "tuned/", "--rank", "2",
                                         "--device", "cpu"], "tuned"),
    }
    for what, (argv, extra) in onto.items():
        c = Case(
            what,
            (BASE, "base"),
            (QV, "qv"),
            (QV, "qv2"),
            (IDS, "ids.safetensors"),
            ("kohya/te_lora.safetensors", "k.safetensors"),
        )
        if extra == "nf4":
            c.copy("quant/nf4", "nf4")
        if extra == "hard":
            os.link(c.p("k.safetensors"), c.p("hk.safetensors"))
        if extra == "symlink_model":
            os.symlink("base/model.safetensors", c.p("sm.safetensors"))
        if extra == "tuned":
            os.makedirs(c.p("tuned"))
            shutil.copy(os.path.join(W, "_tuned.safetensors"), c.p("tuned/model.safetensors"))
            shutil.copy(c.p("base/config.json"), c.p("tuned/config.json"))
        if extra == "ok":
            run_ok(c, argv)
            continue
        if extra == "tuned":
            run_either(c, argv)
            continue
        run(c, argv, mention=["also an input"])


# ---------------------------------------------------------------- existing outputs, read-only, full disk, signals
@case
def existing_outputs():
    # An output folder that already holds files: unrelated files stay, a stale adapter is replaced whole.
    specs = {
        "extract": ["extract", "--base", "base", "--tuned", "tuned.safetensors", "--out", "o", "--rank", "2",
                    "--device", "cpu", "--quiet"],
        "resize": ["resize", "qv", "--rank", "2", "--out", "o", "--quiet"],
        "combine": ["combine", "--adapter", "qv", "--adapter", "qv", "--method", "cat", "--out", "o", "--quiet"],
        "train": ["train", "--model", "base", "--data", "ids.safetensors", "--seq-len", "8", "--steps", "1", "--batch",
                  "1", "--out", "o", "--quiet"],
        "convert": ["convert", "qv", "--to", "peft", "--out", "o", "--quiet"],
        "dequantize": ["dequantize", "nf4", "--out", "o", "--quiet"],
    }
    for cmd, argv in specs.items():
        c = Case(
            f"existing_out_{cmd}",
            (BASE, "base"),
            (QV, "qv"),
            (TUNED, "tuned.safetensors"),
            (IDS, "ids.safetensors"),
            ("quant/nf4", "nf4"),
        )
        # The folder holds an older sharded checkpoint, an older adapter in another format and a note.
        c.copy("llama/base_sharded", "o")
        c.copy("llama/adapters/rslora_all/adapter_config.json", "o/adapter_config.json")
        c.write("o/NOTES.md", "mine\n")
        c.write("o/adapter_model.bin", b"old torch pickle")
        os.makedirs(c.p("o/checkpoint-1"))
        c.write("o/checkpoint-1/state.json", "{}")
        p = run_ok(c, argv)
        if p.returncode:
            continue
        left = sorted(os.listdir(c.p("o")))
        tmp = [n for n in left if ".tmp" in n or ".lock" in n or ".old" in n]
        if tmp:
            violation(c.name, "temp/lock files left", str(tmp))
        if "NOTES.md" not in left:
            violation(c.name, "an unrelated file was removed", str(left))
        if "adapter_model.bin" in left and cmd not in ("dequantize",):
            # PEFT's from_pretrained prefers adapter_model.safetensors, so a stale .bin is harmless there;
            # recorded for the report.
            print(f"note: {c.name}: a stale adapter_model.bin stays beside the new adapter")
        if cmd in ("extract", "resize", "combine", "train", "convert"):
            got = json.load(open(c.p("o/adapter_config.json")))
            if got.get("use_rslora") and cmd != "convert":
                violation(c.name, "the old adapter_config.json survived", "")
            # A stale sharded checkpoint in an adapter folder: transformers would load it as a model.
            stale = [n for n in left if n.startswith("model-0000") or n == "model.safetensors.index.json"]
            if stale:
                print(f"note: {c.name}: an adapter written into a folder that keeps a checkpoint: {stale}")


def have_root_mount():
    return os.geteuid() == 0 and shutil.which("mount") is not None


@case
def readonly_and_full_disk():
    if not have_root_mount():
        print("note: not root: read-only and full-disk cases skipped")
        STATS["skipped"] += 1
        return
    specs = {
        "extract": ["extract", "--base", "base", "--tuned", "tuned.safetensors", "--out", "MNT/o", "--rank", "8",
                    "--device", "cpu"],
        "resize": ["resize", "qv", "--rank", "2", "--out", "MNT/o"],
        "combine": ["combine", "--adapter", "qv", "--adapter", "qv", "--method", "cat", "--out", "MNT/o"],
        "train": ["train", "--model", "base", "--data", "ids.safetensors", "--seq-len", "8", "--steps", "1", "--batch",
                  "1", "--out", "MNT/o"],
        "dequantize": ["dequantize", "nf4", "--out", "MNT/o"],
        "eval_logits": ["eval", "--model", "base", "--input-ids", "ids.safetensors", "--seq-len", "64", "--device", "cpu",
                        "--logits", "MNT/l.safetensors"],
        "merge_part": ["merge", "--base", "base", "--adapter", "qv", "--out", "MNT/o", "--part", "1/1"],
        "convert": ["convert", "qv", "--to", "kohya", "--out", "MNT/k.safetensors"],
        "recipe": ["run", "r.toml", "--quiet"],
    }
    for mode, size in (("ro", "1M"), ("full", "4k")):
        for cmd, argv in specs.items():
            c = Case(
                f"{mode}_{cmd}",
                (BASE, "base"),
                (QV, "qv"),
                (TUNED, "tuned.safetensors"),
                (IDS, "ids.safetensors"),
                ("quant/nf4", "nf4"),
            )
            mnt = c.p("mnt")
            os.makedirs(mnt)
            c.write("r.toml", '[[step]]\nname = "m"\ncommand = "merge"\nbase = "base"\nadapter = ["qv"]\nout = "mnt/o"\n')
            opts = "size=" + size + (",ro" if mode == "ro" else "")
            if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", mnt]).returncode:
                violation(c.name, "cannot mount a tmpfs as root", "")
                return
            try:
                if mode == "full":
                    # Leave a few KB: enough to start writing, not to finish.
                    pass
                argv = [a.replace("MNT", "mnt") for a in argv]
                run(c, argv, rc=(3,), mention=["mnt"])
                left = os.listdir(mnt)
                if left:
                    violation(c.name, "files left on the small disk", str(left))
            finally:
                subprocess.run(["umount", mnt])


@case
def signals_mid_run():
    # A ~100 MB base (24 f32 1024x1024 weights) so the run lasts long enough to be interrupted;
    # merge is covered by tests/it/hardening/all_or_nothing.rs.
    import random as _r
    rnd = _r.Random(7)
    for sig in (signal.SIGINT, signal.SIGTERM):
        for cmd in ("extract", "combine"):
            c = Case(f"signal_{sig.name}_{cmd}")
            n = 1024
            w = struct.pack("<%df" % (n * n), *[rnd.uniform(-1, 1) for _ in range(n * n)])
            tens = {f"layers.{i}.proj.weight": ("F32", [n, n], w) for i in range(24)}
            st_build(c.p("base.safetensors"), tens)
            tuned = {k: ("F32", sh, w[4:] + w[:4]) for k, (dt, sh, _) in tens.items()}
            st_build(c.p("tuned.safetensors"), tuned)
            if cmd == "extract":
                argv = ["extract", "--base", "base.safetensors", "--tuned", "tuned.safetensors", "--out", "o", "--rank",
                        "16", "--device", "cpu", "--quiet"]
            else:
                a = {}
                for i in range(24):
                    a[f"base_model.model.layers.{i}.proj.lora_A.weight"] = ("F32", [64, n], w[: 64 * n * 4])
                    a[f"base_model.model.layers.{i}.proj.lora_B.weight"] = ("F32", [n, 64], w[: 64 * n * 4])
                os.makedirs(c.p("ad"))
                st_build(c.p("ad/adapter_model.safetensors"), a)
                json.dump({"peft_type": "LORA", "r": 64, "lora_alpha": 64, "target_modules": ["proj"]},
                          open(c.p("ad/adapter_config.json"), "w"))
                argv = ["combine", "--adapter", "ad", "--adapter", "ad", "--method", "svd", "--rank", "32", "--out", "o",
                        "--quiet"]
            STATS["cases"] += 1
            before = snapshot(c.dir)
            child = signalled(c, argv, sig, 1.5)
            if child is None:
                continue
            if snapshot(c.dir) != before:
                violation(c.name, f"rc={child.returncode}: the case folder changed",
                          str(sorted(set(snapshot(c.dir)) - set(before)))[:300])


# ---------------------------------------------------------------- odds and ends
@case
def misc():
    def mk(name):
        c = Case(name, (BASE, "base"), (QV, "qv"), (IDS, "ids.safetensors"))
        return c
    onto = {
        "check_fix_out_is_adapter": ["check", "qv", "--fix", "--out", "qv"],
        "check_fix_out_missing_dotdot": ["check", "qv", "--fix", "--out", "nox/../qv"],
        "convert_diffusers_onto_input": ["convert", "qv", "--to", "diffusers", "--out", "qv/adapter_model.safetensors"],
        "convert_lycoris_onto_input_dotdot": ["convert", "k.safetensors", "--to", "lycoris", "--out", "nox/../k.safetensors"],
        "eval_logits_missing_dotdot": ["eval", "--model", "base", "--input-ids", "ids.safetensors", "--seq-len", "8",
                                       "--device", "cpu", "--logits", "nox/../ids.safetensors"],
        "train_out_missing_dotdot_onto_init": ["train", "--model", "base", "--data", "ids.safetensors", "--seq-len", "8",
                                               "--steps", "1", "--batch", "1", "--init-adapter", "qv", "--out", "nox/../qv"],
        "inspect_plot_missing_dotdot": ["inspect", "qv", "--spectrum", "--plot", "nox/../qv/adapter_config.json"],
        "extract_kohya_missing_dotdot": ["extract", "--base", "base", "--tuned", "base", "--out",
                                         "nox/../base/model.safetensors", "--rank", "2", "--format", "kohya", "--device", "cpu"],
    }
    for what, argv in onto.items():
        c = mk(what)
        c.copy("kohya/te_lora.safetensors", "k.safetensors")
        run(c, argv, mention=["also an input"])
    # Paths that are not what they seem.
    odd = {
        "adapter_symlink_loop": (["inspect", "loop"], ["loop"]),
        "adapter_config_is_a_folder": (["inspect", "qv"], ["adapter_config.json"]),
        "adapter_folder_empty": (["resize", "empty", "--rank", "2", "--out", "o"], ["empty"]),
        "out_file_with_trailing_slash": (["convert", "qv", "--to", "kohya", "--out", "k.safetensors/"], ["k.safetensors"]),
        "out_name_too_long": (["resize", "qv", "--rank", "2", "--out", "x" * 300], ["x" * 40]),
        "base_shard_symlink_loop": (["merge", "--base", "sb", "--adapter", "qv", "--out", "o"], ["model-00002-of-00004.safetensors"]),
        "zero_sized_base_weight": (["merge", "--base", "zb", "--adapter", "qv", "--out", "o"], [WQ]),
        "zero_d_base_weight": (["merge", "--base", "zd", "--adapter", "qv", "--out", "o"], [WQ]),
    }
    for what, (argv, mention) in odd.items():
        c = mk(what)
        if what == "adapter_symlink_loop":
            os.symlink("loop", c.p("loop"))
        if what == "adapter_config_is_a_folder":
            os.remove(c.p("qv/adapter_config.json"))
            os.makedirs(c.p("qv/adapter_config.json"))
        if what == "adapter_folder_empty":
            os.makedirs(c.p("empty"))
        if what == "base_shard_symlink_loop":
            c.copy("llama/base_sharded", "sb")
            os.remove(c.p("sb/model-00002-of-00004.safetensors"))
            os.symlink("model-00002-of-00004.safetensors", c.p("sb/model-00002-of-00004.safetensors"))
        if what in ("zero_sized_base_weight", "zero_d_base_weight"):
            d = "zb" if what.startswith("zero_sized") else "zd"
            c.copy(BASE, d)
            shape, n = ([0, 64], 0) if d == "zb" else ([], 4)
            st_edit(c.p(d, "model.safetensors"), lambda t: t.__setitem__(WQ, ("F32", shape, t[WQ][2][:n])))
        rc = (3,) if what == "out_name_too_long" else (2,)
        run(c, argv, rc=rc + (2,), mention=mention)
    # diff over lying bases: overlapping offsets, a hole, a 0-d and a 0-sized tensor.
    for what in ("overlap", "hole", "zero_d", "zero_sized"):
        c = mk(f"diff_base_{what}")
        f = c.p("base/model.safetensors")
        h, data = st_read(f)
        if what == "overlap":
            k2 = "model.layers.0.self_attn.k_proj.weight"
            h[k2]["data_offsets"] = [h[WQ]["data_offsets"][0], h[WQ]["data_offsets"][0] + h[k2]["data_offsets"][1] - h[k2]["data_offsets"][0]]
            st_write(f, h, data)
        elif what == "hole":
            for k, v in h.items():
                if k != "__metadata__" and v["data_offsets"][0] >= h[WQ]["data_offsets"][1]:
                    v["data_offsets"] = [v["data_offsets"][0] + 4, v["data_offsets"][1] + 4]
            o = h[WQ]["data_offsets"][1]
            st_write(f, h, data[:o] + b"\0" * 4 + data[o:])
        else:
            st_edit(f, lambda t: t.__setitem__(WQ, ("F32", [] if what == "zero_d" else [0, 64],
                                                    t[WQ][2][:4] if what == "zero_d" else b"")))
        if what in ("overlap", "hole"):
            run(c, ["diff", "base", os.path.join(FX, BASE)], mention=["model.safetensors"])
        else:
            # A consistent file with another shape: a difference (exit 1), never a crash.
            run(c, ["diff", "base", os.path.join(FX, BASE)], rc=(1,))
