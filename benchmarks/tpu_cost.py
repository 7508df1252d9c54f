"""What one prompt-tuning step of the paper's recipe costs on the TPU v5e pool against the L4 pool (infra/README.md).

Every step time here is an ESTIMATE, not a measurement: no TPU or L4 is reachable from this project's
machine. A step's FLOPs are counted from T5 1.1 base's shapes (google/t5-base-lm-adapt, the paper's base) and
the recipe in params.yaml (batch, source and target lengths, prompt length); prompt tuning runs the forward
pass and the activation gradients (the frozen weights get no gradients), about 2x the forward FLOPs. The time
is those FLOPs over the accelerator's published bf16 peak at an assumed model-FLOPs utilisation (MFU). The
prices are the published on-demand list prices (us-central1) for the node pools' machine types as last known;
this machine cannot reach the pricing pages, so check them there before budgeting.

    python benchmarks/tpu_cost.py     # -> benchmarks/results/tpu_cost.{json,md}
"""

from __future__ import annotations

from pathlib import Path

from softprompt.config import load_params
from softprompt.io import atomic_write_text, write_json

RESULTS = Path(__file__).parent / "results"
# google/t5-base-lm-adapt (T5 1.1 base): gated-GELU feed-forward (3 matrices), untied output layer.
T5_BASE = {"d_model": 768, "d_ff": 2048, "layers": 12, "vocab": 32128}
MFU = 0.35  # assumed for both pools; XLA on TPUs and cuBLAS on L4 reach 30-50% on a 250M-parameter T5
POOLS = {
    # accelerator -> machine type, accelerators per node, bf16 peak per accelerator (dense), $/hour for the node
    "nvidia-l4": {"machine_type": "g2-standard-8", "chips": 1, "peak_tflops": 121.0, "usd_per_hour": 0.85,
                  "price_source": "cloud.google.com/compute/gpus-pricing: g2-standard-8 (1 L4), us-central1"},
    "tpu-v5-lite-podslice": {"machine_type": "ct5lp-hightpu-4t", "chips": 4, "peak_tflops": 197.0,
                             "usd_per_hour": 4 * 1.20,
                             "price_source": "cloud.google.com/tpu/pricing: v5e $1.20 per chip-hour x 4 chips, "
                                             "us-central1"},
}


def step_tflops(batch: int, source: int, prompt: int, target: int) -> float:
    """FLOPs of one prompt-tuning step (forward + activation gradients), in TFLOPs."""
    d, ff, layers, vocab = (T5_BASE[k] for k in ("d_model", "d_ff", "layers", "vocab"))
    attn, ffn = 4 * d * d, 3 * d * ff
    enc_tokens, dec_tokens = batch * (source + prompt), batch * target
    matmuls = 2 * enc_tokens * layers * (attn + ffn) + 2 * dec_tokens * (layers * (2 * attn + ffn) + d * vocab)
    per_seq = source + prompt
    scores = batch * layers * (4 * per_seq * per_seq * d + 4 * target * target * d + 4 * target * per_seq * d)
    return 2 * (matmuls + scores) / 1e12


def main() -> None:
    params = load_params()
    train, steps = params["train"], params["train"]["steps"]
    tflops = step_tflops(train["batch_size"], train["max_source_length"], params["prompt"]["length"],
                         train["max_target_length"])
    rows = []
    for name, pool in POOLS.items():
        seconds = tflops / (pool["chips"] * pool["peak_tflops"] * MFU)
        usd_step = pool["usd_per_hour"] * seconds / 3600
        rows.append({"accelerator": name, **pool, "step_seconds_estimate": round(seconds, 4),
                     "usd_per_step_estimate": usd_step, "hours_for_run_estimate": round(seconds * steps / 3600, 2),
                     "usd_for_run_estimate": round(usd_step * steps, 2)})
    recipe = {"model": "google/t5-base-lm-adapt", "batch_size": train["batch_size"], "steps": steps,
              "max_source_length": train["max_source_length"], "prompt_length": params["prompt"]["length"],
              "max_target_length": train["max_target_length"], "step_tflops": round(tflops, 2), "mfu_assumed": MFU}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "tpu_cost.json", {"estimates_only": True, "recipe": recipe, "pools": rows})
    atomic_write_text(RESULTS / "tpu_cost.md", markdown(recipe, rows))
    print(markdown(recipe, rows))


def markdown(recipe: dict, rows: list[dict]) -> str:
    lines = [f"Paper recipe: {recipe['model']}, batch {recipe['batch_size']}, {recipe['max_source_length']} + "
             f"{recipe['prompt_length']} prompt input tokens, {recipe['max_target_length']} target tokens: "
             f"{recipe['step_tflops']} TFLOPs per step. Step times are estimates (FLOPs / (peak x "
             f"{recipe['mfu_assumed']:.0%} MFU)); prices are published list prices.", "",
             "| pool | machine | $/hour (published) | s/step (estimate) | $/1k steps (estimate) | "
             f"{recipe['steps']:,} steps: hours, $ (estimate) |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['accelerator']} | {r['machine_type']} ({r['chips']} chip{'s' if r['chips'] > 1 else ''}) "
                     f"| {r['usd_per_hour']:.2f} | {r['step_seconds_estimate']:.3f} | "
                     f"{1000 * r['usd_per_step_estimate']:.3f} | {r['hours_for_run_estimate']:.2f} h, "
                     f"${r['usd_for_run_estimate']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
