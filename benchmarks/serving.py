"""Serving benchmark: `softprompt serve` on loopback, on a `mini` base, driven by open- and closed-loop clients.

It builds a `mini`-config base (params.yaml `models.mini`: d_model 256, 4+4 layers) with a real SentencePiece
vocabulary (T5's 32k pieces from ../shared/models/t5-spiece, or --tokenizer), a real registry (git + GTO tags
+ a local DVC remote) with one production prompt per task, and runs `softprompt serve` as a subprocess. The
weights are untrained: throughput is what it would be, but no row stops early at EOS, so every row decodes to
its full budget (8 tokens for the classification tasks, 32 for SQuAD).

The tasks differ in generation budget and prompt length (rte 100, boolq 50, ag_news 20, squad 10 vectors;
squad decodes 32 tokens, the others 8). It measures, against targets:

- mixed / single-task throughput: each task's single-task baseline is a server with only that task's prompt
  loaded; the uniform mix is compared with their harmonic mean (the rate of the same mix served task by
  task), target >= 0.9;
- overhead against the physical limit: the mixed server's throughput over raw batched `generate` of the same
  rows (same mix, batch size and budget grouping), timed in this process while the server idles, target >= 0.8;
- latency at half of the mixed capacity, with open-loop (Poisson) arrivals timed from each request's intended
  send time (no coordinated omission);
- overload: open-loop arrivals at 2x capacity; every request must be answered (200, or 503/429), none lost
  or hung; the p99 of admitted requests <= 2x the p99 at half load; the server's RSS flat;
- the memory cost of each extra task, loaded hot as promotions, target <= P x d x 4 bytes + 1 MB;
- a promotion under load: failed requests (target 0), and the last old-version response after the server's own
  swap event (its softprompt_prompt_swap_timestamp_seconds), target <= 2 s.

    python benchmarks/serving.py            # make bench-serving
    python benchmarks/serving.py --quick    # shorter phases, for a smoke check

Writes benchmarks/results/serving.json and serving.md.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_SPIECE = Path(__file__).resolve().parents[2] / "shared" / "models" / "t5-spiece" / "spiece.model"
MIXED = {"rte": 100, "boolq": 50, "ag_news": 20, "squad": 10}  # task -> prompt length; squad: a 32-token budget
# Loaded hot for the memory measurement: the first absorbs what the first hot load costs once (the watch
# thread's allocator arena, code paths run for the first time); the others are measured.
EXTRA = ("cb", "wic", "copa", "mrpc", "multirc", "record", "qqp")
EXTRA_PROMPT_LENGTH = 100
FIELDS = {
    "rte": {"premise": "The cat sat on the mat all day long.", "hypothesis": "A cat sat."},
    "cb": {"premise": "It rained all day, she said to him.", "hypothesis": "It rained."},
    "boolq": {"question": "is the sky blue", "passage": "The sky is blue on a clear day."},
    "ag_news": {"text": "Stocks rallied on Wall Street today as tech shares rose."},
    "squad": {"context": "Paris is the capital and largest city of France.", "question": "What is the capital?"},
}
TARGETS = {"throughput_ratio": 0.9, "overhead_ratio": 0.8, "failed_requests": 0, "swap_seconds": 2.0,
           "overload_p99_factor": 2.0, "overload_rss_growth": 0.05}
# Inputs vary (words appended to each text field), as real traffic does.
WORDS = ("river", "stone", "market", "quietly", "yellow", "seven", "engine", "garden", "under", "policy",
         "morning", "violin", "distant", "paper", "coffee", "winter", "signal", "north", "fragile", "ladder")


# ------------------------------------------------------------------------------------------- base and registry


def make_base(root: Path, tokenizer: Path) -> Path:
    """A `mini` base with seeded random weights and the given SentencePiece vocabulary, saved as a checkpoint."""
    from softprompt.pretrain import initial_checkpoint, load_tokenizer

    return initial_checkpoint("mini", load_tokenizer(tokenizer), root / "base-mini", seed=0)


def make_registry(root: Path, base_dir: Path, tasks: dict[str, int]) -> Path:
    """A git registry whose every task has a production prompt (version 1) on the base."""
    repo = root / "registry"
    repo.mkdir(parents=True)
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "bench"], ["config", "user.email", "b@b"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    (repo / "README.md").write_text("serving benchmark registry\n")
    subprocess.run(["git", "-C", str(repo), "add", "README.md"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "init"], check=True)
    for task, length in tasks.items():
        register(root, repo, base_dir, task, seed=1, prompt_length=length)
    return repo


_BASES: dict[str, Any] = {}


def base_of(base_dir: Path) -> Any:
    from softprompt.models import load_base

    if str(base_dir) not in _BASES:
        _BASES[str(base_dir)] = load_base(str(base_dir))
    return _BASES[str(base_dir)]


def register(root: Path, repo: Path, base_dir: Path, task: str, seed: int, prompt_length: int) -> int:
    """Save a (random) prompt for `task` and register it with --promote force; returns the version."""
    from softprompt import registry
    from softprompt.config import PromptConfig
    from softprompt.prompt import attach_prompt, save_prompt

    base = base_of(base_dir)
    model = attach_prompt(base, PromptConfig(length=prompt_length, init="random"), None, seed)
    prompt = save_prompt(model, root / "prompts" / f"{task}-{seed}",
                         {"task": task, "base_model": base.name, "base_fingerprint": base.fingerprint,
                          "prompt_length": prompt_length, "train": {"seed": seed}})
    metrics = root / "prompts" / f"{task}-{seed}.json"
    metrics.write_text(json.dumps({"task": task, "score": 50.0 + seed, "main_metric": "score"}))
    settings = registry.Settings(remote=str(root / "remote"), promotion_margin=0.0, lock_timeout=120)
    return registry.register(repo, task, prompt, metrics, run_id=f"bench-{seed}", policy="force",
                             settings=settings).version


# ------------------------------------------------------------------------------------------- the server


class Server:
    """`softprompt serve` as a subprocess on a free loopback port."""

    def __init__(self, repo: Path, base_dir: Path, args: argparse.Namespace, tasks: tuple[str, ...] | None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "softprompt.cli", "serve", "--model", str(base_dir), "--registry", str(repo),
               "--host", "127.0.0.1", "--port", str(self.port), "--max-batch-size", str(args.max_batch_size),
               "--max-wait-ms", str(args.max_wait_ms), "--poll-interval", "0.5",
               "--max-queue-rows", str(args.max_queue_rows), "--request-timeout", str(args.request_timeout)]
        if tasks:
            cmd += ["--tasks", ",".join(tasks)]
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)})
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"softprompt serve exited: {self.log.read()[-2000:]}")
            try:
                if get(self.port, "/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("softprompt serve did not become ready in 600 s")

    def rss(self) -> int:
        """Resident memory of the server process, in bytes (what /metrics' process_resident_memory_bytes says)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def metric(self, name: str, labels: str = "") -> float:
        text = get(self.port, "/metrics")[1]
        pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*{re.escape(labels)}[^}}]*\}})? (\S+)$", re.M)
        return sum(float(m.group(2)) for m in pattern.finditer(text))

    def passes(self) -> tuple[float, float]:
        """Rows and model passes so far (the batch-size histogram's sum and count)."""
        return self.metric("softprompt_batch_size_sum"), self.metric("softprompt_batch_size_count")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------- the clients


class Client:
    """Requests of `instances` rows each, round-robin over `tasks`; closed-loop (`run`) or open-loop (`open_loop`)."""

    def __init__(self, port: int, tasks: tuple[str, ...], instances: int, seed: int = 0) -> None:
        self.port, self.tasks, self.instances = port, tasks, instances
        self.lock = threading.Lock()
        self.rng = random.Random(seed)

    def instance(self, task: str) -> dict[str, Any]:
        with self.lock:  # client threads share the seeded generator
            extra = {k: " ".join(self.rng.choices(WORDS, k=self.rng.randint(2, 10))) for k in FIELDS[task]}
        return {k: f"{v} {extra[k]}" for k, v in FIELDS[task].items()}

    def body(self, task: str) -> bytes:
        return json.dumps({"instances": [self.instance(task) for _ in range(self.instances)]}).encode()

    def run(self, clients: int, seconds: float) -> list[dict[str, Any]]:
        """Closed loop: each of `clients` sends, waits for the answer, sends again, for `seconds` (capacity)."""
        records: list[dict[str, Any]] = []
        stop_at = time.monotonic() + seconds

        def loop(offset: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            for i in itertools.count(offset):
                if time.monotonic() >= stop_at:
                    break
                records.append(self.send(conn, self.tasks[i % len(self.tasks)], time.monotonic()))
            conn.close()

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return records

    def open_loop(self, rate: float, seconds: float, seed: int, workers: int = 128) -> list[dict[str, Any]]:
        """Poisson arrivals at `rate` requests/s for `seconds`; latency is timed from each intended send time,
        so a slow answer cannot delay (and hide) the arrivals behind it."""
        rng = random.Random(seed)
        schedule, t = [], 0.0
        while True:
            t += rng.expovariate(rate)
            if t >= seconds:
                break
            schedule.append(t)
        start = time.monotonic() + 0.2
        records: list[dict[str, Any]] = []
        counter = itertools.count()

        def worker() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            for i in iter(lambda: next(counter), None):
                if i >= len(schedule):
                    break
                intended = start + schedule[i]
                time.sleep(max(0.0, intended - time.monotonic()))
                record = self.send(conn, self.tasks[i % len(self.tasks)], intended)
                if not isinstance(record["status"], int):
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                records.append(record)
            conn.close()

        threads = [threading.Thread(target=worker) for _ in range(min(workers, len(schedule)))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return records

    def send(self, conn: http.client.HTTPConnection, task: str, intended: float) -> dict[str, Any]:
        body = self.body(task)
        try:
            conn.request("POST", f"/v1/models/{task}:predict", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
            versions = sorted({p["version"] for p in json.loads(data)["predictions"]}) if status == 200 else []
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            status, versions = type(e).__name__, []
        return {"task": task, "status": status, "versions": versions, "sent": intended, "done": time.monotonic(),
                "wall_done": time.time()}


def rate_of(records: list[dict[str, Any]], instances: int) -> tuple[float, float, int]:
    """(instances answered per second over the records' span, that span, instances answered)."""
    ok = [r for r in records if r["status"] == 200]
    span = max(r["done"] for r in ok) - min(r["sent"] for r in ok)
    return len(ok) * instances / span, span, len(ok) * instances


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# ------------------------------------------------------------------------------------------- phases


def measure_capacity(server: Server, tasks: tuple[str, ...], args: argparse.Namespace) -> dict[str, Any]:
    """Closed-loop throughput of `tasks` (uniform mix), after a warm-up; rows per pass from /metrics."""
    client = Client(server.port, tasks, args.instances)
    client.run(args.clients, args.warmup)
    rows0, passes0 = server.passes()
    rate, span, done = rate_of(client.run(args.clients, args.seconds), args.instances)
    rows1, passes1 = server.passes()
    return {"instances_per_s": rate, "seconds": span, "instances": done,
            "rows_per_pass": (rows1 - rows0) / max(passes1 - passes0, 1)}


def measure_raw(base_dir: Path, root: Path, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """The physical limit: batched generate of the same mix at the same batch size, budget-grouped as the
    server groups them, the model call alone timed (tokenizing and decoding are left out)."""
    import torch

    from softprompt.serving.engine import PromptSet, Row, load_served_prompt

    torch.set_num_threads(args.threads)
    base = base_of(base_dir)
    prompts = {t: load_served_prompt(base, t, root / "prompts" / f"{t}-1", "v1") for t in MIXED}
    snapshot = PromptSet(base, prompts)
    client = Client(0, tuple(MIXED), 1, seed=1)
    tasks = itertools.cycle(MIXED)
    done, elapsed = 0, 0.0
    with torch.no_grad():
        while elapsed < seconds:
            rows = [Row(t, {**client.instance(t), "idx": 0, "label": None, "id": "q", "answer": "", "answers": []}
                        if t == "squad" else {**client.instance(t), "idx": 0, "label": None})
                    for t in itertools.islice(tasks, args.max_batch_size)]
            for group in snapshot._groups(rows, "generate"):  # the server's own grouping by budget
                chosen = [rows[i] for i in group]
                ids, mask, index = snapshot._encode(chosen)
                budget = snapshot.prompts[chosen[0].task].budget
                started = time.perf_counter()
                snapshot.ensemble.generate(ids, mask, prompt_index=index, max_new_tokens=budget, do_sample=False,
                                           num_beams=1)
                elapsed += time.perf_counter() - started
            done += len(rows)
    return {"instances_per_s": done / elapsed, "instances": done, "seconds": elapsed,
            "torch_threads": torch.get_num_threads()}


def latency_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r["done"] - r["sent"] for r in records if r["status"] == 200]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {"requests": len(records), "statuses": statuses, "admitted": len(ok),
            "p50_ms": 1000 * percentile(ok, 50) if ok else None, "p99_ms": 1000 * percentile(ok, 99) if ok else None}


def measure_open_loop(server: Server, capacity: float, factor: float, seconds: float,
                      args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Open-loop Poisson arrivals offering `factor` x `capacity` instances/s; RSS sampled meanwhile."""
    rate = factor * capacity / args.instances
    client = Client(server.port, tuple(MIXED), args.instances, seed=seed)
    rss: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            rss.append((time.monotonic(), server.rss()))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        records = client.open_loop(rate, seconds, seed)
    finally:
        stop.set()
        sampler.join()
    out = {"offered_instances_per_s": rate * args.instances, "seconds": seconds, **latency_of(records),
           "lost": sum(not isinstance(r["status"], int) for r in records)}
    if rss:
        third = max(1, len(rss) // 3)
        first, last = statistics.mean(v for _, v in rss[:third]), statistics.mean(v for _, v in rss[-third:])
        out.update(rss_first_third_mb=first / 2**20, rss_last_third_mb=last / 2**20, rss_growth=(last - first) / first)
    return out


def measure_memory(server: Server, root: Path, repo: Path, base_dir: Path) -> dict[str, Any]:
    """RSS before and after the registry gains len(EXTRA) - 1 tasks, promoted one at a time and loaded hot. The
    same traffic runs after each load, so what differs is what the server holds per task; each step's growth is
    kept, to show it is a slope and not one jump."""
    client = Client(server.port, tuple(MIXED), 4)

    def settle(tasks: int) -> int:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(json.loads(get(server.port, "/v2/models")[1])["models"]) < tasks:
            time.sleep(0.5)
        client.run(4, 3)  # every allocation this traffic makes has happened once
        time.sleep(1.5)
        return server.rss()

    register(root, repo, base_dir, EXTRA[0], seed=1, prompt_length=EXTRA_PROMPT_LENGTH)
    readings = [settle(len(MIXED) + 1)]
    for i, task in enumerate(EXTRA[1:], start=2):
        register(root, repo, base_dir, task, seed=1, prompt_length=EXTRA_PROMPT_LENGTH)
        readings.append(settle(len(MIXED) + i))
    before, after = readings[0], readings[-1]
    base = base_of(base_dir)
    d_model = base.model.config.d_model
    model_bytes = sum(p.numel() * p.element_size() for p in base.model.parameters())
    per_task = (after - before) / (len(EXTRA) - 1)
    prompt_bytes = EXTRA_PROMPT_LENGTH * d_model * 4
    k = len(MIXED) + len(EXTRA)
    return {"d_model": d_model, "vocab": base.model.config.vocab_size, "rss_before_mb": before / 2**20,
            "rss_after_mb": after / 2**20, "extra_tasks": len(EXTRA) - 1,
            "steps_kib": [(b - a) / 1024 for a, b in zip(readings, readings[1:])],
            "per_task_bytes": per_task, "budget_bytes": prompt_bytes + 2**20, "prompt_bytes": prompt_bytes,
            "model_bytes": model_bytes, "k_tasks": k, "k_models_bytes": k * model_bytes,
            "one_model_k_prompts_bytes": model_bytes + sum(MIXED.values()) * d_model * 4
            + len(EXTRA) * prompt_bytes}


def measure_promotion(server: Server, root: Path, repo: Path, base_dir: Path,
                      args: argparse.Namespace) -> dict[str, Any]:
    """Register and promote a new rte version while clients loop; who failed, and how long after the server's
    own swap a response still named the old version."""
    client = Client(server.port, tuple(MIXED), args.instances)
    result: dict[str, Any] = {}

    def promote() -> None:
        time.sleep(2)
        result["number"] = register(root, repo, base_dir, "rte", seed=2, prompt_length=MIXED["rte"])

    thread = threading.Thread(target=promote)
    thread.start()
    records = client.run(args.clients, args.seconds + 15)
    thread.join()
    new = f"v{result['number']}"
    passes = max(server.metric("softprompt_batch_seconds_count"), 1)
    pass_seconds = server.metric("softprompt_batch_seconds_sum") / passes
    swapped_at = server.metric("softprompt_prompt_swap_timestamp_seconds", 'task="rte"')
    rte = [r for r in records if r["task"] == "rte" and r["status"] == 200]
    old_after = [r["wall_done"] - swapped_at for r in rte if r["versions"] != [new] and r["wall_done"] > swapped_at]
    first_new = min((r["wall_done"] - swapped_at for r in rte if r["versions"] == [new]), default=float("inf"))
    return {"requests": len(records), "failed": sum(r["status"] != 200 for r in records),
            "statuses": latency_of(records)["statuses"], "new_version": new, "mean_pass_s": pass_seconds,
            "swapped": any(r["versions"] == [new] for r in rte), "first_new_version_s": first_new,
            "last_old_version_s": max(old_after, default=0.0)}


# ------------------------------------------------------------------------------------------- report


def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def markdown(result: dict[str, Any]) -> str:
    r, mem, pro, half, over = (result[k] for k in ("ratios", "memory", "promotion", "half_load", "overload"))
    met = result["met"]
    single = result["single"]
    lines = ["# Serving benchmark", "",
             f"Device: {result['device']}; **the CPU was shared with other work** (load average "
             f"{result['load_average']} at the start, {result['load_average_end']} at the end); the load generator "
             "runs on the same cores as the server. Base: `mini` config (d_model "
             f"{mem['d_model']}, 4+4 layers, {mem['vocab']}-piece SentencePiece vocabulary) with **untrained "
             "weights**: no row stops at EOS, so every row decodes its full budget (8 tokens; squad 32). Tasks: "
             + ", ".join(f"{t} (P={p})" for t, p in MIXED.items()) + f"; {result['instances']} instances per request;"
             f" max batch {result['max_batch_size']} rows, max wait {result['max_wait_ms']} ms, queue bound "
             f"{result['max_queue_rows']} rows, request timeout {result['request_timeout_s']:.0f} s, "
             f"{result['threads']} torch thread(s) in the server and the raw generate.", "",
             "| measurement | value | target | met |", "|---|---|---|---|",
             f"| mixed / single-task throughput (single: a server with that task's prompt only; harmonic mean) | "
             f"{r['mixed_over_single']:.3f} ({result['mixed']['instances_per_s']:.1f} vs "
             f"{r['single_harmonic_mean']:.1f} instances/s) | >= {TARGETS['throughput_ratio']} | "
             f"{yes(met['throughput_ratio'])} |",
             f"| server / raw batched generate, same rows and batch size | {r['server_over_raw']:.3f} "
             f"({result['mixed']['instances_per_s']:.1f} vs {result['raw']['instances_per_s']:.1f} instances/s) | "
             f">= {TARGETS['overhead_ratio']} | {yes(met['overhead_ratio'])} |",
             f"| latency at half capacity, open loop ({half['offered_instances_per_s']:.1f} instances/s offered, "
             f"{half['requests']} requests) | p50 {fmt_ms(half['p50_ms'])}, p99 {fmt_ms(half['p99_ms'])} | reported "
             "| - |",
             f"| overload 2x capacity for {over['seconds']:.0f} s: requests unanswered (lost or hung) of "
             f"{over['requests']} | {over['lost']} (statuses {over['statuses']}) | 0 | "
             f"{yes(met['overload_answered'])} |",
             f"| overload: p99 of admitted requests | {fmt_ms(over['p99_ms'])} | <= 2 x {fmt_ms(half['p99_ms'])} | "
             f"{yes(met['overload_p99'])} |",
             f"| overload: server RSS, last third vs first third | {over.get('rss_growth', 0) * 100:+.1f}% "
             f"({over.get('rss_first_third_mb', 0):.0f} -> {over.get('rss_last_third_mb', 0):.0f} MiB) | <= "
             f"+{TARGETS['overload_rss_growth'] * 100:.0f}% | {yes(met['overload_rss'])} |",
             f"| memory per extra task (server RSS, {mem['extra_tasks']} tasks promoted and loaded hot) | "
             f"{mem['per_task_bytes'] / 1024:.1f} KiB | <= P x d x 4 + 1 MB = {mem['budget_bytes'] / 1024:.0f} KiB | "
             f"{yes(met['memory_per_task'])} |",
             f"| failed requests during a promotion ({pro['requests']} requests; statuses {pro['statuses']}) | "
             f"{pro['failed']} | 0 | "
             f"{yes(met['failed_requests'])} |",
             f"| last old-version response after the server's swap | {pro['last_old_version_s']:.2f} s (first "
             f"{pro['new_version']}: {pro['first_new_version_s']:.2f} s; a pass takes {pro['mean_pass_s']:.2f} s on "
             f"average: a pass begun before the swap answers with the old version) | <= 2 s | "
             f"{yes(met['swap_seconds'])} |",
             "", "| instances/s | " + " | ".join(f"{t} alone" for t in MIXED) + " | mixed | raw generate (mix) |",
             "|---|" + "---|" * (len(MIXED) + 2),
             "| closed loop | " + " | ".join(f"{single[t]['instances_per_s']:.1f}" for t in MIXED)
             + f" | {result['mixed']['instances_per_s']:.1f} | {result['raw']['instances_per_s']:.1f} |",
             "| rows per pass | " + " | ".join(f"{single[t]['rows_per_pass']:.1f}" for t in MIXED)
             + f" | {result['mixed']['rows_per_pass']:.1f} | {result['max_batch_size']} |", "",
             f"One model + {mem['k_tasks']} prompts: {mem['one_model_k_prompts_bytes'] / 2**20:.1f} MiB of weights; "
             f"{mem['k_tasks']} per-task models: {mem['k_models_bytes'] / 2**20:.1f} MiB. Server RSS "
             f"{mem['rss_before_mb']:.1f} MiB with {len(MIXED) + 1} tasks, {mem['rss_after_mb']:.1f} MiB with "
             f"{mem['k_tasks']}; growth at each hot load (KiB): " + ", ".join(f"{x:.0f}" for x in mem["steps_kib"])
             + "."]
    return "\n".join(lines) + "\n"


def fmt_ms(value: float | None) -> str:
    return "no request admitted" if value is None else f"{value:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke check)")
    parser.add_argument("--tokenizer", type=Path, default=SHARED_SPIECE, help="a SentencePiece model (spiece.model)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (2 x max batch / instances "
                                                                "keeps every pass full)")
    parser.add_argument("--instances", type=int, default=8, help="instances per request")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--max-queue-rows", type=int, default=32, help="the server's queue bound (one pass' worth)")
    parser.add_argument("--request-timeout", type=float, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server and of the raw "
                        "generate (1: on a shared CPU more threads spin against each other)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.tokenizer.is_file():
        sys.exit(f"--tokenizer {args.tokenizer}: no such file; pass a SentencePiece model (T5's spiece.model)")
    args.warmup, args.seconds, args.overload_seconds = (2, 6, 8) if args.quick else (6, 30, 30)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")  # library chatter while the registry is built
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="softprompt-bench-serving-") as tmp:
        root = Path(tmp)
        os.environ["SOFTPROMPT_REGISTRY_REMOTE"] = str(root / "remote")
        base_dir = make_base(root, args.tokenizer)
        repo = make_registry(root, base_dir, MIXED)
        result = run_phases(root, repo, base_dir, args)
    result.update(load_average=load_start, load_average_end=round(os.getloadavg()[0], 2))
    from softprompt.io import atomic_write_text, write_json

    write_json(args.output / "serving.json", result)
    atomic_write_text(args.output / "serving.md", markdown(result))
    print(markdown(result))


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_phases(root: Path, repo: Path, base_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    single = {}
    for task in MIXED:  # each baseline server holds that task's prompt only
        say(f"single-task baseline: {task}")
        server = Server(repo, base_dir, args, (task,))
        try:
            single[task] = measure_capacity(server, (task,), args)
        finally:
            server.close()
    server = Server(repo, base_dir, args, None)
    try:
        say("mixed capacity")
        mixed = measure_capacity(server, tuple(MIXED), args)
        say("raw generate")
        raw = measure_raw(base_dir, root, args, mixed["seconds"] / 2)  # the server idles meanwhile
        capacity = mixed["instances_per_s"]
        say("half load, open loop")
        half = measure_open_loop(server, capacity, 0.5, args.seconds * 2, args, seed=1)
        say("overload, open loop")
        overload = measure_open_loop(server, capacity, 2.0, args.overload_seconds, args, seed=2)
        say("memory per task")
        memory = measure_memory(server, root, repo, base_dir)
        say("promotion under load")
        promotion = measure_promotion(server, root, repo, base_dir, args)
    finally:
        server.close()
    harmonic = len(single) / sum(1 / s["instances_per_s"] for s in single.values())
    ratios = {"single_harmonic_mean": harmonic, "mixed_over_single": mixed["instances_per_s"] / harmonic,
              "server_over_raw": mixed["instances_per_s"] / raw["instances_per_s"]}
    answered = overload["lost"] == 0 and set(overload["statuses"]) <= {"200", "503", "429"}
    return {
        "device": f"cpu x{os.cpu_count()} ({platform.machine()})", "instances": args.instances,
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
        "max_queue_rows": args.max_queue_rows, "request_timeout_s": args.request_timeout, "quick": args.quick,
        "threads": args.threads, "seconds": args.seconds, "overload_seconds": args.overload_seconds,
        "clients": args.clients, "prompt_lengths": MIXED, "single": single, "mixed": mixed, "raw": raw,
        "ratios": ratios, "half_load": half, "overload": overload, "memory": memory, "promotion": promotion,
        "targets": TARGETS,
        "met": {"throughput_ratio": ratios["mixed_over_single"] >= TARGETS["throughput_ratio"],
                "overhead_ratio": ratios["server_over_raw"] >= TARGETS["overhead_ratio"],
                "overload_answered": answered,
                "overload_p99": None not in (overload["p99_ms"], half["p99_ms"])
                and overload["p99_ms"] <= TARGETS["overload_p99_factor"] * half["p99_ms"],
                "overload_rss": overload.get("rss_growth", 1.0) <= TARGETS["overload_rss_growth"],
                "memory_per_task": memory["per_task_bytes"] <= memory["budget_bytes"],
                "failed_requests": promotion["failed"] == TARGETS["failed_requests"],
                "swap_seconds": promotion["swapped"] and promotion["last_old_version_s"] <= TARGETS["swap_seconds"]},
    }


if __name__ == "__main__":
    main()
