"""Hostile-input round over every command (issue: independent hostile round).

Each case builds its inputs in a fresh folder (copies of the committed fixtures, then one lie),
runs one lorakit command there and checks the project's bad-input contract:
  * the exit status is the expected one (2 for bad input, 3 for an output that cannot be written);
  * stderr is exactly one line (warnings aside) and names the file (and the tensor where the case
    has one);
  * nothing changed in the case folder: no output, no temp file, no lock, no created folder, every
    input byte-identical (each file hashed with BLAKE2b before and after).
A few cases are expected to succeed (an output folder that already holds files): they check what
the run kept and removed instead.

Run:  /work/venv/bin/python fuzz/hostile_round.py [target/debug/lorakit] [FILTER]
Prints one line per violation, then a JSON summary; exits 1 if any. Deterministic (no random
choice; every lie is written out in hostile_cases_inputs.py and hostile_cases_formats.py, the
checks in hostile_lib.py). Standard library only; the disk-full and read-only cases need root
(a small tmpfs is mounted) and are skipped otherwise.

Results, 2026-12-05, debug build, as root (so the read-only and full-disk cases ran):
1,189 cases in ~45 s. Against main at de1e3fc: 52 cases violated the contract (77 checks); after
this round's fixes: 6, then 0 once the three pending fixes below landed (main after 06447ac).
  fixed (46 cases):
  * 10  `--out nox/../INPUT` with `nox` missing escaped the onto-input check: merge overwrote
        its base's model.safetensors, resize/combine their adapter; also convert, train,
        check --fix, eval --logits, inspect --plot, extract, dequantize (io/writer/aliasing.rs)
  *  6  recipes: a later step writing onto a folder an earlier step read, two steps writing one
        output (both ran), a NUL byte in a path (exit 3); in --dry-run too (ops/recipe.rs)
  *  6  eval/train token files: ids beyond the vocabulary trained on by train, eval and train
        errors not naming the ids or text file, an empty text file unnamed (ops/eval.rs, train)
  *  2  a NaN model weight: eval printed a NaN perplexity with exit 0, train did not name it
  *  8  usage errors (clap: a bad --part, --max-shard-size, a value like -1) were 2-6 lines
        (main.rs)
  * 13  quantized bases read against their config: compressed-tensors scales contradicting the
        config's strategy/group size, a malformed config_groups (not an object, bad regex,
        num_bits 0, group_size 0) ignored, an FP8 single scale where weight_block_size makes
        a grid, a malformed weight_block_size ignored (io/quant/ct_config.rs, scan.rs, fp8.rs)
  *  1  a one-file --out with a trailing slash: exit 3 at write time, now exit 2 up front
  fixed after the round (tests in tests/it/hardening/round2.rs, no longer ignored):
  *  2  rms_norm_eps -1: eval exit 0 with a NaN loss, train "loss is not finite" without naming
        config.json (src/model/config.rs read any number; now a finite rms_norm_eps ≥ 0 and
        rope_theta > 0, or an error naming config.json and the key)
  *  4  GPTQ/AWQ config no layout has (bits 5, group_size 0, quantization_config a list, AWQ
        version "nope"): merge says "adapter module(s) do not match the base … no base tensor"
        instead of the scan's error, which it raises only when dequantizing
        (src/ops/merge/plan.rs; now a module on such a weight reports the scan's cause,
        QuantMap::unsupported_weight); dequantize named it already
  *  (by reading the accepted refusals) AdaLoRA init_r 0 is reported against
        adapter_model.safetensors, not adapter_config.json (src/adapter/formats/peft/adalora.rs;
        now named against the config)
  accepted as valid (not counted): a negative lora_alpha and rank/alpha_pattern keys matching
  nothing (PEFT accepts both); bnb_4bit_quant_type in config.json (bitsandbytes reads the
  stored quant_state); without a base, a grown or dropped factor of a PEFT AdaLoRA/IA3/OFT/
  LoHa/LoKr folder is a consistent adapter of another shape. An adapter written into a folder
  that holds an older checkpoint or adapter_model.bin keeps them (no file but the outputs is
  touched, as documented); PEFT prefers adapter_model.safetensors.
"""
import json, os, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile_lib import BASE, CASES, FX, LK, QV, STATS, VIOLATIONS, W, selected, violation  # noqa: E402
import hostile_cases_inputs  # noqa: E402,F401  (registers its cases, in this order)
import hostile_cases_formats  # noqa: E402,F401


# ---------------------------------------------------------------- main
def tuned_fixture():
    """The complete fine-tuned checkpoint the extract cases start from (TUNED)."""
    p = subprocess.run([LK, "merge", "--base", os.path.join(FX, BASE, "model.safetensors"), "--adapter",
                        os.path.join(FX, QV), "--out", os.path.join(W, "_tuned.safetensors"), "--quiet"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def main():
    t0 = time.time()
    tuned_fixture()
    for fn in CASES:
        if not selected(fn.__name__):
            continue
        n0, v0 = STATS["cases"], STATS["violations"]
        try:
            fn()
        except Exception as e:  # a harness error is reported, never hidden
            violation(fn.__name__, "harness error", repr(e))
        print(f"# {fn.__name__}: {STATS['cases'] - n0} cases, {STATS['violations'] - v0} violations "
              f"({time.time() - t0:.0f} s)", flush=True)
    STATS["violating_cases"] = sorted(set(VIOLATIONS))
    print(json.dumps(STATS))
    shutil.rmtree(W, ignore_errors=True)
    return 1 if STATS["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
