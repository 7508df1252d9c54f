"""Training-step benchmark: prompt tuning vs model tuning, and softprompt's Trainer vs a plain PEFT loop.

Each measurement runs in its own subprocess so that peak memory (RSS on CPU, max allocated on GPU) is
its own. Runs compare at equal total encoder length: the prompt run's text is shorter by the prompt
length. Optimizers are the paper's: Adafactor at lr 0.3 (prompt) and 0.001 (model).

    python benchmarks/train_step.py            # step-time config (~60M params) + memory config (T5-large size)
    python benchmarks/train_step.py --quick    # smaller, for a smoke check
    python benchmarks/train_step.py --processes 1,2   # softprompt train under torchrun: 1 vs 2 processes (+ --fsdp)

Writes benchmarks/results/train_step.json and train_step.md; --processes writes train_step_processes.{json,md}
(on CPU, gloo: N processes share the cores; with GPUs, one process per GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# ~60M parameters: T5 1.1 small-sized, the config the reference numbers were measured on.
SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=6, num_heads=8)
# T5 1.1 large-sized (~780M parameters): where the memory difference matters.
LARGE = dict(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16)
TINY = dict(vocab_size=32128, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4)


def make_model_dir(config: dict, path: Path) -> Path:
    """A randomly initialised T5 1.1-style checkpoint with a byte tokenizer (1 char = 1 token)."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(**config, feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                   dropout_rate=0.0)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path


def make_data(path: Path, text_len: int, rows: int = 256) -> Path:
    """RTE-format rows whose formatted input is exactly `text_len` byte tokens (plus EOS)."""
    path.mkdir(parents=True, exist_ok=True)
    prefix_len = len("rte hypothesis: h premise: ")
    premise = "x" * (text_len - prefix_len - 1)  # -1: the EOS token the tokenizer appends
    with (path / "train.jsonl").open("w") as f:
        for i in range(rows):
            label = "entailment" if i % 2 else "not_entailment"
            f.write(json.dumps({"premise": premise, "hypothesis": "h", "label": label, "idx": i}) + "\n")
    return path


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plain_loop(model_dir: str, method: str, text_len: int, prompt_len: int, batch: int, steps: int) -> dict:
    """The reference: PEFT (or the bare model) + Adafactor + a hand-written loop, nothing else."""
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).to(device)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if method == "prompt":
        model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=prompt_len,
                                                         num_transformer_submodules=1))
    from softprompt.config import TrainConfig
    from softprompt.training import adafactor

    optimizer_cls, kwargs = adafactor(TrainConfig(method=method))  # the same optimizer and recipe as softprompt
    opt = optimizer_cls([p for p in model.parameters() if p.requires_grad], **kwargs)
    x = tok(["rte hypothesis: h premise: " + "x" * (text_len - 28)] * batch, return_tensors="pt").to(device)
    y = tok(["not_entailment"] * batch, return_tensors="pt").input_ids.to(device)
    assert x.input_ids.shape[1] == text_len
    model.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model(**x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"step_times": times}


def softprompt_run(model_dir: str, method: str, text_len: int, prompt_len: int, batch: int, steps: int,
                   work_dir: str | None = None, fsdp: bool = False) -> dict:
    """softprompt's own training (HF Trainer), timing each optimizer step with a callback. Under torchrun every
    rank runs this (with the same `work_dir`); `batch` is the global batch, split over the ranks."""
    from transformers import TrainerCallback

    from softprompt.config import PromptConfig, TrainConfig
    from softprompt.training import train

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    work = Path(work_dir or tempfile.mkdtemp())
    data = make_data(work / f"data-{os.environ.get('RANK', '0')}", text_len)  # the same rows for every rank
    meta = train("rte", model_dir, data, work / "out", PromptConfig(length=prompt_len, init="random"),
                 TrainConfig(method=method, steps=steps, batch_size=batch, eval_every=10**9, max_source_length=4096,
                             seed=0, fsdp=fsdp), progress=False, callbacks=[StepTimer()])
    return {"step_times": times, "frozen_bytes_per_process": meta["placement"]["frozen_bytes_per_process"]}


def child(args: argparse.Namespace) -> None:
    """One measurement, in this process (under torchrun: this rank); prints a JSON line."""
    if args.impl == "plain":
        result = plain_loop(args.model_dir, args.method, args.text_len, args.prompt_len, args.batch, args.steps)
    else:
        result = softprompt_run(args.model_dir, args.method, args.text_len, args.prompt_len, args.batch, args.steps,
                                args.work_dir, args.fsdp)
    times = sorted(result["step_times"][args.warmup:])
    # The mean of the faster half: interference from other processes only ever adds time, and the slow tail
    # it creates moves a median by several percent on a 2-core machine.
    step = statistics.mean(times[:max(1, len(times) // 2)])
    tokens = args.batch * (args.text_len + (args.prompt_len if args.method == "prompt" else 0))
    rank = int(os.environ.get("RANK", "0"))
    line = json.dumps({"impl": args.impl, "method": args.method, "seconds_per_step": step,
                       "encoder_tokens_per_second": tokens / step, "peak_memory_mb": peak_memory_mb(),
                       "steps_timed": len(times), "rank": rank,
                       **{k: v for k, v in result.items() if k != "step_times"}})
    if args.work_dir:  # under torchrun: one file per rank (the ranks' stdout lines interleave)
        Path(args.work_dir, f"result-{rank}.json").write_text(line)
    else:
        print(line)


def measure(model_dir: Path, impl: str, method: str, total_len: int, prompt_len: int, batch: int, steps: int,
            warmup: int) -> dict:
    text_len = total_len - prompt_len if method == "prompt" else total_len
    cmd = [sys.executable, __file__, "--child", "--impl", impl, "--method", method, "--model-dir", str(model_dir),
           "--text-len", str(text_len), "--prompt-len", str(prompt_len), "--batch", str(batch),
           "--steps", str(steps), "--warmup", str(warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="plain")
    parser.add_argument("--method", default="prompt")
    parser.add_argument("--model-dir")
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the step-time runs")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small configs, for a smoke check")
    parser.add_argument("--skip-memory", action="store_true", help="skip the T5-large-sized memory runs")
    parser.add_argument("--processes", help="e.g. 1,2: softprompt train under torchrun with each process count")
    parser.add_argument("--fsdp", action="store_true", help="with --processes: also N processes with --fsdp")
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.processes:
        return compare_processes(args)

    work = Path(tempfile.mkdtemp())
    speed_cfg, mem_cfg = (TINY, TINY) if args.quick else (SMALL, LARGE)
    total, prompt_len = 128, 20
    speed_dir = make_model_dir(speed_cfg, work / "speed")
    rows: dict[str, dict] = {}
    # Interleaved repeats, keeping each run's fastest median: on a shared 2-core machine one run's median
    # still moves by several percent, and background load only ever makes a run slower.
    for repeat in range(args.repeats):
        for impl, method in (("plain", "model"), ("plain", "prompt"), ("softprompt", "prompt")):
            result = measure(speed_dir, impl, method, total, prompt_len, args.batch, args.steps, args.warmup)
            key = f"{impl}/{method}"
            if key not in rows or result["seconds_per_step"] < rows[key]["seconds_per_step"]:
                rows[key] = {**result, "repeats": repeat + 1}
            print(repeat, impl, method, result, file=sys.stderr)
    memory = {}
    if not args.skip_memory:
        mem_dir = make_model_dir(mem_cfg, work / "memory")
        for method in ("model", "prompt"):
            memory[method] = measure(mem_dir, "plain", method, 64, 16, 2, 4, 1)
            print("memory", method, memory[method], file=sys.stderr)
    report = summarize(rows, memory, speed_cfg, mem_cfg, args.batch, total, prompt_len)
    write_report(report)


def measure_processes(model_dir: Path, processes: int, fsdp: bool, text_len: int, prompt_len: int, batch: int,
                      steps: int, warmup: int, threads: int | None = None) -> list[dict]:
    """softprompt train on `processes` torchrun ranks (global batch `batch`): one JSON row per rank. `threads`
    sets OMP_NUM_THREADS (torchrun's default: 1 per rank with several ranks, torch's own with one)."""
    work = Path(tempfile.mkdtemp())
    launcher = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={processes}"]
    cmd = [*launcher, __file__, "--child", "--impl", "softprompt", "--method", "prompt", "--model-dir",
           str(model_dir), "--text-len", str(text_len), "--prompt-len", str(prompt_len), "--batch", str(batch),
           "--steps", str(steps), "--warmup", str(warmup), "--work-dir", str(work), *(["--fsdp"] if fsdp else [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    rows = [json.loads(path.read_text()) for path in sorted(work.glob("result-*.json"))]
    if sorted(r["rank"] for r in rows) != list(range(processes)):
        raise SystemExit(f"expected one result per rank, got {rows}")
    return rows


def compare_processes(args: argparse.Namespace) -> None:
    """1 vs N processes of `softprompt train` (DDP; with --fsdp also FSDP) at the same global batch: examples/s
    (from rank 0's step time), the ratio to 1 process, and each rank's peak memory and frozen-weight bytes."""
    import torch

    counts = [int(n) for n in args.processes.split(",")]
    cfg = TINY if args.quick else SMALL
    model_dir = make_model_dir(cfg, Path(tempfile.mkdtemp()) / "model")
    total, prompt_len = 128, 20
    # (processes, fsdp, OMP threads): 1 process on every core, and on one core, which a loaded machine can favour
    variants = ([(n, False, None) for n in counts] + ([(1, False, 1)] if 1 in counts else [])
                + ([(n, True, None) for n in counts if n > 1] if args.fsdp else []))
    best: dict[str, dict] = {}
    load_before = os.getloadavg()[0]  # the machine is shared: its load says how far the times can be trusted
    for repeat in range(args.repeats):  # interleaved; each variant keeps its fastest run (load only adds time)
        for n, fsdp, threads in variants:
            rows = measure_processes(model_dir, n, fsdp, total - prompt_len, prompt_len, args.batch, args.steps,
                                     args.warmup, threads)
            key = f"{n} process{'es' if n > 1 else ''}" + (" fsdp" if fsdp else "") + (" 1 thread" if threads else "")
            main = next(r for r in rows if r["rank"] == 0)
            row = {"processes": n, "fsdp": fsdp, "seconds_per_step": main["seconds_per_step"],
                   "examples_per_second": args.batch / main["seconds_per_step"],
                   "peak_memory_mb_per_rank": [r["peak_memory_mb"] for r in sorted(rows, key=lambda r: r["rank"])],
                   "frozen_mb_per_rank": main["frozen_bytes_per_process"] / 2**20, "repeats": repeat + 1}
            if key not in best or row["seconds_per_step"] < best[key]["seconds_per_step"]:
                best[key] = row
            print(repeat, key, row, file=sys.stderr)
    one = best["1 process"]["examples_per_second"] if "1 process" in best else None
    for row in best.values():
        row["throughput_vs_1_process"] = row["examples_per_second"] / one if one else None
    gpus = torch.cuda.device_count()
    report = {"device": f"cuda x{gpus}: {torch.cuda.get_device_name()}" if gpus else f"cpu x{os.cpu_count()} (gloo)",
              "config": cfg, "global_batch": args.batch, "total_encoder_length": total, "prompt_length": prompt_len,
              "steps": args.steps, "runs": best, "load_average_1min": [load_before, os.getloadavg()[0]],
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_step_processes.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# softprompt train: 1 vs N processes (torchrun)", "",
             f"Device: {report['device']}; global batch {args.batch} split over the processes; encoder length "
             f"{total} (prompt {prompt_len} + text); T5 1.1 {'tiny' if args.quick else 'small'}-sized base. Load "
             f"average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
             f"{os.cpu_count()} cores: the fastest of {args.repeats} interleaved runs is kept.", "",
             "| run | s/step | examples/s | vs 1 process | peak RSS MB per rank | frozen weights MB per rank |",
             "|---|---|---|---|---|---|"]
    for name, r in best.items():
        ratio = f"{r['throughput_vs_1_process']:.2f}x" if r["throughput_vs_1_process"] else "-"
        peaks = " / ".join(f"{m:.0f}" for m in r["peak_memory_mb_per_rank"])
        lines.append(f"| {name} | {r['seconds_per_step']:.4f} | {r['examples_per_second']:.1f} | {ratio} | {peaks} | "
                     f"{r['frozen_mb_per_rank']:.1f} |")
    (RESULTS / "train_step_processes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def summarize(rows: dict, memory: dict, speed_cfg: dict, mem_cfg: dict, batch: int, total: int,
              prompt_len: int) -> dict:
    import torch

    step = {k: v["seconds_per_step"] for k, v in rows.items()}
    ratios = {
        "prompt_vs_model_step_time": step["plain/prompt"] / step["plain/model"],
        "softprompt_vs_plain_step_time": step["softprompt/prompt"] / step["plain/prompt"],
    }
    targets = {"prompt_vs_model_step_time": 0.75, "softprompt_vs_plain_step_time": 1.05}
    if memory:
        ratios["prompt_vs_model_peak_memory"] = memory["prompt"]["peak_memory_mb"] / memory["model"]["peak_memory_mb"]
        targets["prompt_vs_model_peak_memory"] = 0.6
    return {
        "device": "cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{os.cpu_count()}",
        "torch_threads": torch.get_num_threads(),
        "speed_config": speed_cfg, "memory_config": mem_cfg, "batch_size": batch,
        "total_encoder_length": total, "prompt_length": prompt_len,
        "runs": rows, "memory_runs": memory, "ratios": ratios, "targets": targets,
        "met": {k: ratios[k] <= targets[k] for k in ratios},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_report(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_step.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Training-step benchmark", "", f"Device: {report['device']}; batch {report['batch_size']}; total "
             f"encoder length {report['total_encoder_length']} (prompt {report['prompt_length']} + text).", "",
             "| run | s/step | encoder tokens/s | peak MB |", "|---|---|---|---|"]
    for name, r in {**report["runs"], **{f"memory/{k}": v for k, v in report["memory_runs"].items()}}.items():
        lines.append(f"| {name} | {r['seconds_per_step']:.4f} | {r['encoder_tokens_per_second']:.0f} | "
                     f"{r['peak_memory_mb']:.0f} |")
    lines += ["", "| ratio | value | target | met |", "|---|---|---|---|"]
    for k, v in report["ratios"].items():
        lines.append(f"| {k} | {v:.3f} | <= {report['targets'][k]} | {'yes' if report['met'][k] else 'NO'} |")
    (RESULTS / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
