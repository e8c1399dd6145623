#!/usr/bin/env python3
"""PyTorch + PEFT twin of benches/train.rs: LoRA training and evaluation throughput on the same
synthetic Llama checkpoint, batch and settings. Prints one JSON object on stdout.

    python benches/train_torch.py MODEL_DIR IDS.safetensors --batch 4 --steps 10 --warmup 2 --threads 2

IDS.safetensors holds `input_ids` [sequences, seq_len] (I64). Training: LoRA r=8, alpha=16 on
q_proj,v_proj, AdamW (lr 1e-4), clip_grad_norm_ 1.0, loss = model(input_ids, labels=input_ids).loss.
Evaluation: the same forward and loss under torch.no_grad() with the adapter unmerged.
"""

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("ids")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa (default) or eager")
    args = ap.parse_args()

    import transformers
    from peft import LoraConfig, get_peft_model

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation=args.attn
    )
    pm = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    ids = load_file(args.ids)["input_ids"]
    n, seq = ids.shape
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    def batch(i):
        rows = [(i * args.batch + j) % n for j in range(args.batch)]
        return ids[rows]

    pm.train()
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t0 = time.perf_counter()
        b = batch(i)
        loss = pm(input_ids=b, labels=b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - t0

    pm.eval()
    with torch.no_grad():
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                t0 = time.perf_counter()
            b = batch(i)
            pm(input_ids=b, labels=b).loss.item()
    eval_s = time.perf_counter() - t0

    tokens = args.steps * args.batch * seq
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "attn_implementation": args.attn,
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "seq_len": seq,
                "steps": args.steps,
                "train_tokens_per_s": tokens / train_s,
                "eval_tokens_per_s": tokens / eval_s,
                "final_loss": float(loss),
            }
        )
    )


if __name__ == "__main__":
    main()
