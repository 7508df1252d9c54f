"""Serving benchmark: `softprompt serve` on loopback, driven by a closed-loop HTTP client.

It builds a real registry (git + GTO tags + a local DVC remote) with one production prompt per task on the
`tiny` base, starts `softprompt serve` as a subprocess, and measures:

- throughput of mixed-task batches (4 tasks, uniform mix) as a ratio to single-task batches of the same size
  (each of the 4 tasks alone; the mixed run is compared with their mean), target >= 0.9;
- p50 / p99 latency with clients paced to about half of the mixed peak;
- the memory cost of each extra task: the server's RSS before and after the registry gains more tasks (loaded
  hot, as promotions), per task, target <= P x d x 4 bytes + 1 MB; beside it, what K per-task model copies cost;
- a promotion during load: failed requests (target 0) and how long after the promotion returned a response
  still named the old version (target: none later than 2 s).

    python benchmarks/serving.py            # make bench-serving
    python benchmarks/serving.py --quick    # shorter phases, for a smoke check

Writes benchmarks/results/serving.json and serving.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
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
MIXED = ("rte", "cb", "mrpc", "qqp")  # generate budgets within one token of each other (14-15 byte tokens)
# Loaded hot for the memory measurement: the first absorbs what the first hot load costs once (the watch
# thread's allocator arena, code paths run for the first time); the others are measured.
EXTRA = ("boolq", "wic", "copa", "ag_news", "multirc", "squad", "record")
FIELDS = {
    "rte": {"premise": "The cat sat on the mat all day long.", "hypothesis": "A cat sat."},
    "cb": {"premise": "It rained all day, she said to him.", "hypothesis": "It rained."},
    "mrpc": {"sentence1": "The company said profits rose sharply.", "sentence2": "Profits went up a lot."},
    "qqp": {"question1": "How do I learn to cook rice well?", "question2": "What is the best way to cook rice?"},
    "boolq": {"question": "is the sky blue", "passage": "The sky is blue on a clear day."},
    "wic": {"word": "bank", "sentence1": "He sat on the bank.", "sentence2": "The bank was closed.",
            "start1": 0, "end1": 0, "start2": 0, "end2": 0},
    "copa": {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.", "question": "cause"},
    "ag_news": {"text": "Stocks rallied on Wall Street today as tech shares rose."},
}
TARGETS = {"throughput_ratio": 0.9, "failed_requests": 0, "swap_seconds": 2.0}
# Inputs vary (words appended to each text field), as real traffic does: a batch generates until its last row
# stops, so identical inputs would make single-task batches stop together and flatter them.
WORDS = ("river", "stone", "market", "quietly", "yellow", "seven", "engine", "garden", "under", "policy",
         "morning", "violin", "distant", "paper", "coffee", "winter", "signal", "north", "fragile", "ladder")


# ------------------------------------------------------------------------------------------- the registry


def make_registry(root: Path, tasks: tuple[str, ...], prompt_length: int) -> Path:
    """A git registry whose every task has a production prompt (version 1) on the tiny base."""
    repo = root / "registry"
    repo.mkdir(parents=True)
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "bench"], ["config", "user.email", "b@b"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    (repo / "README.md").write_text("serving benchmark registry\n")
    subprocess.run(["git", "-C", str(repo), "add", "README.md"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "init"], check=True)
    for task in tasks:
        register(root, repo, task, seed=1, prompt_length=prompt_length)
    return repo


def register(root: Path, repo: Path, task: str, seed: int, prompt_length: int) -> int:
    """Save a (random) prompt for `task` and register it with --promote force; returns the version."""
    from softprompt import registry
    from softprompt.config import PromptConfig
    from softprompt.models import load_base
    from softprompt.prompt import attach_prompt, save_prompt

    base = load_base("tiny")
    model = attach_prompt(base, PromptConfig(length=prompt_length, init="random"), None, seed)
    prompt = save_prompt(model, root / "prompts" / f"{task}-{seed}",
                         {"task": task, "base_model": "tiny", "base_fingerprint": base.fingerprint,
                          "prompt_length": prompt_length, "train": {"seed": seed}})
    metrics = root / "prompts" / f"{task}-{seed}.json"
    metrics.write_text(json.dumps({"task": task, "score": 50.0 + seed, "main_metric": "score"}))
    settings = registry.Settings(remote=str(root / "remote"), promotion_margin=0.0, lock_timeout=120)
    return registry.register(repo, task, prompt, metrics, run_id=f"bench-{seed}", policy="force",
                             settings=settings).version


# ------------------------------------------------------------------------------------------- the server


class Server:
    """`softprompt serve` as a subprocess on a free loopback port."""

    def __init__(self, repo: Path, max_batch_size: int, max_wait_ms: float) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "softprompt.cli", "serve", "--model", "tiny", "--registry", str(repo),
               "--host", "127.0.0.1", "--port", str(self.port), "--max-batch-size", str(max_batch_size),
               "--max-wait-ms", str(max_wait_ms), "--poll-interval", "0.5"]
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
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

    def metric(self, name: str) -> float:
        text = get(self.port, "/metrics")[1]
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
                   or line.startswith(name + "{"))

    def passes(self) -> tuple[float, float]:
        """Rows and model passes so far (the batch-size histogram's sum and count)."""
        return self.metric("softprompt_batch_size_sum"), self.metric("softprompt_batch_size_count")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------- the client


class Client:
    """Closed-loop clients: each sends a request, waits for the answer, (optionally) waits for its next slot."""

    def __init__(self, port: int, tasks: tuple[str, ...], instances: int, mode: str = "generate") -> None:
        self.port, self.tasks, self.instances, self.mode = port, tasks, instances, mode
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.rng = random.Random(0)

    def body(self, task: str) -> bytes:
        return json.dumps({"instances": [self.instance(task) for _ in range(self.instances)],
                           "mode": self.mode}).encode()

    def instance(self, task: str) -> dict[str, Any]:
        with self.lock:  # client threads share the seeded generator
            extra = {k: " ".join(self.rng.choices(WORDS, k=self.rng.randint(2, 10))) for k in FIELDS[task]}
        return {k: f"{v} {extra[k]}" if isinstance(v, str) else v for k, v in FIELDS[task].items()}

    def run(self, clients: int, seconds: float, max_requests: int, interval: float = 0.0) -> list[dict[str, Any]]:
        """Drive the server for `seconds` (or `max_requests` in all); `interval`: each client's pacing."""
        self.records = []
        stop_at = time.monotonic() + seconds
        counter = iter(range(max_requests))

        def loop(offset: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            next_at = time.monotonic() + interval * offset / max(clients, 1)
            i = offset
            while time.monotonic() < stop_at and next(counter, None) is not None:
                if interval:
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += interval
                task = self.tasks[i % len(self.tasks)]
                i += 1
                self.records.append(self.send(conn, task))
            conn.close()

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.records

    def send(self, conn: http.client.HTTPConnection, task: str) -> dict[str, Any]:
        started = time.monotonic()
        try:
            conn.request("POST", f"/v1/models/{task}:predict", self.body(task),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
            versions = sorted({p["version"] for p in json.loads(data)["predictions"]}) if status == 200 else []
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            status, versions = f"{type(e).__name__}", []
        return {"task": task, "status": status, "versions": versions, "sent": started, "done": time.monotonic()}


def throughput(records: list[dict[str, Any]], instances: int) -> float:
    """Instances answered per second over the span of the records."""
    ok = [r for r in records if r["status"] == 200]
    span = max(r["done"] for r in ok) - min(r["sent"] for r in ok)
    return len(ok) * instances / span


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# ------------------------------------------------------------------------------------------- phases


def measure_throughput(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Per mode: each task alone and the uniform mix, in interleaved rounds (load drift hits all alike)."""
    configs = [*((t, (t,)) for t in MIXED), ("mixed", MIXED)]
    out: dict[str, Any] = {}
    for mode in ("generate", "rank"):
        client = Client(server.port, MIXED, args.instances, mode)
        client.run(args.clients, 2, 10_000)  # warm-up
        done = {label: [0, 0.0, 0.0, 0.0] for label, _ in configs}  # instances, seconds, rows, passes
        for _ in range(args.rounds):
            for label, tasks in configs:
                client.tasks = tasks
                rows0, passes0 = server.passes()
                records = client.run(args.clients, args.seconds, args.max_requests)
                ok = [r for r in records if r["status"] == 200]
                rows1, passes1 = server.passes()
                done[label][0] += len(ok) * args.instances
                done[label][1] += max(r["done"] for r in ok) - min(r["sent"] for r in ok)
                done[label][2] += rows1 - rows0
                done[label][3] += passes1 - passes0
        rate = {label: v[0] / v[1] for label, v in done.items()}
        single = {t: rate[t] for t in MIXED}
        # The same uniform workload served in single-task batches takes sum(1 / rate_t) / 4 per instance:
        # the harmonic mean of the single-task rates is the rate to compare the mixed one with.
        harmonic = len(single) / sum(1 / r for r in single.values())
        out[mode] = {"single": single, "single_harmonic_mean": harmonic, "mixed": rate["mixed"],
                     "ratio": rate["mixed"] / harmonic,
                     "rows_per_pass": {label: v[2] / v[3] for label, v in done.items()}}
    return out


def measure_latency(server: Server, args: argparse.Namespace, peak: float) -> dict[str, Any]:
    """Clients paced so that the offered load is about half of the mixed peak (instances/s)."""
    rate = peak / 2 / args.instances  # requests per second
    interval = args.clients / rate
    client = Client(server.port, MIXED, args.instances)
    records = client.run(args.clients, args.seconds, args.max_requests, interval=interval)
    ok = [r["done"] - r["sent"] for r in records if r["status"] == 200]
    return {"offered_instances_per_s": rate * args.instances, "achieved_instances_per_s":
            throughput(records, args.instances), "requests": len(records),
            "p50_ms": 1000 * percentile(ok, 50), "p99_ms": 1000 * percentile(ok, 99)}


def measure_memory(server: Server, root: Path, repo: Path, prompt_length: int) -> dict[str, Any]:
    """RSS before and after the registry gains len(EXTRA) - 1 tasks, promoted one at a time and loaded hot (as
    promotions arrive in production). The same traffic (the first 4 tasks) runs after each load, so what differs
    is what the server holds per task; each step's growth is kept, to show it is a slope and not one jump."""
    from softprompt.models import load_base

    client = Client(server.port, MIXED, 4)

    def settle(tasks: int) -> int:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(json.loads(get(server.port, "/v2/models")[1])["models"]) < tasks:
            time.sleep(0.5)
        client.run(4, 4, 10_000)  # every allocation this traffic makes has happened once
        time.sleep(1.5)
        return server.rss()

    register(root, repo, EXTRA[0], seed=1, prompt_length=prompt_length)
    readings = [settle(len(MIXED) + 1)]
    for i, task in enumerate(EXTRA[1:], start=2):
        register(root, repo, task, seed=1, prompt_length=prompt_length)
        readings.append(settle(len(MIXED) + i))
    before, after = readings[0], readings[-1]
    base = load_base("tiny")
    d_model = base.model.config.d_model
    model_bytes = sum(p.numel() * p.element_size() for p in base.model.parameters())
    per_task = (after - before) / (len(EXTRA) - 1)
    budget = prompt_length * d_model * 4 + 2**20
    k = len(MIXED) + len(EXTRA)
    return {"d_model": d_model, "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
            "extra_tasks": len(EXTRA) - 1, "steps_kib": [(b - a) / 1024 for a, b in zip(readings, readings[1:])],
            "per_task_bytes": per_task, "budget_bytes": budget, "prompt_bytes": prompt_length * d_model * 4,
            "model_bytes": model_bytes, "k_tasks": k,
            "one_model_k_prompts_bytes": model_bytes + k * prompt_length * d_model * 4,
            "k_models_bytes": k * model_bytes}


def measure_promotion(server: Server, root: Path, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Register and promote a new rte version while clients loop; who failed, and when the old version stopped."""
    client = Client(server.port, MIXED, args.instances)
    result: dict[str, Any] = {}

    def promote() -> None:
        time.sleep(2)
        result["number"] = register(root, repo, "rte", seed=2, prompt_length=args.prompt_length)
        result["promoted_at"] = time.monotonic()

    thread = threading.Thread(target=promote)
    thread.start()
    records = client.run(args.clients, args.seconds + 20, 1_000_000)
    thread.join()
    new, promoted_at = f"v{result['number']}", result["promoted_at"]
    rte = [r for r in records if r["task"] == "rte" and r["status"] == 200]
    old_after = [r["done"] - promoted_at for r in rte if r["versions"] != [new] and r["done"] > promoted_at]
    first_new = min((r["done"] - promoted_at for r in rte if r["versions"] == [new]), default=float("inf"))
    return {"requests": len(records), "failed": sum(r["status"] != 200 for r in records),
            "new_version": new, "first_new_version_s": first_new,
            "last_old_version_s": max(old_after, default=0.0),
            "responses_after_swap_all_new": all(r["versions"] == [new] for r in rte if r["done"] > promoted_at
                                                + max(old_after, default=0.0))}


# ------------------------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    t, lat, mem, pro = result["throughput"], result["latency"], result["memory"], result["promotion"]
    lines = ["# Serving benchmark", "",
             f"Device: {result['device']}, load average {result['load_average']} at the start; base `tiny` "
             f"(d_model {result['d_model']}); P = {result['prompt_length']}; {result['clients']} closed-loop clients x "
             f"{result['instances']} instances per request; max batch {result['max_batch_size']} rows, max wait "
             f"{result['max_wait_ms']} ms; throughput in {result['rounds']} interleaved rounds.", "",
             "| measurement | value | target | met |", "|---|---|---|---|"]
    for mode, m in t.items():
        lines.append(f"| mixed / single-task throughput, {mode} (4 tasks, uniform mix) | {m['ratio']:.3f} "
                     f"({m['mixed']:.0f} vs {m['single_harmonic_mean']:.0f} instances/s) | "
                     f">= {TARGETS['throughput_ratio']} | {yes(m['ratio'] >= TARGETS['throughput_ratio'])} |")
    lines += [f"| latency at ~half of the generate peak ({lat['achieved_instances_per_s']:.0f} instances/s) | "
              f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms | reported | - |",
              f"| memory per extra task (server RSS, {mem['extra_tasks']} tasks promoted and loaded hot) | "
              f"{mem['per_task_bytes'] / 1024:.1f} KiB | <= P x d x 4 + 1 MB = {mem['budget_bytes'] / 1024:.0f} KiB | "
              f"{yes(result['met']['memory_per_task'])} |",
              f"| failed requests during a promotion ({pro['requests']} requests) | {pro['failed']} | 0 | "
              f"{yes(result['met']['failed_requests'])} |",
              f"| last old-version response after the promotion returned | {pro['last_old_version_s']:.2f} s "
              f"(first {pro['new_version']}: {pro['first_new_version_s']:.2f} s) | <= 2 s | "
              f"{yes(result['met']['swap_seconds'])} |", "",
              "| instances/s | " + " | ".join(f"{k} alone" for k in MIXED) + " | mixed | mean rows per pass (mixed) |",
              "|---|" + "---|" * (len(MIXED) + 2)]
    for mode, m in t.items():
        lines.append(f"| {mode} | " + " | ".join(f"{m['single'][k]:.0f}" for k in MIXED)
                     + f" | {m['mixed']:.0f} | {m['rows_per_pass']['mixed']:.1f} |")
    lines += ["", f"One model + {mem['k_tasks']} prompts: {mem['one_model_k_prompts_bytes'] / 2**20:.2f} MiB of "
              f"weights; {mem['k_tasks']} per-task models: {mem['k_models_bytes'] / 2**20:.2f} MiB. Server RSS "
              f"{mem['rss_before_mb']:.1f} MiB with {len(MIXED) + 1} tasks, {mem['rss_after_mb']:.1f} MiB with "
              f"{mem['k_tasks']}; growth at each hot load (KiB): "
              + ", ".join(f"{x:.0f}" for x in mem["steps_kib"]) + "."]
    return "\n".join(lines) + "\n"


def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke check)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (2 x max batch / instances "
                                                                "keeps every pass full)")
    parser.add_argument("--instances", type=int, default=8, help="instances per request")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.seconds, args.max_requests, args.rounds = (2, 300, 1) if args.quick else (4, 20_000, 3)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")  # library chatter while the registry is built
    args.load_average = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="softprompt-bench-serving-") as tmp:
        root = Path(tmp)
        os.environ["SOFTPROMPT_REGISTRY_REMOTE"] = str(root / "remote")
        repo = make_registry(root, MIXED, args.prompt_length)
        server = Server(repo, args.max_batch_size, args.max_wait_ms)
        try:
            result = run_phases(server, root, repo, args)
        finally:
            server.close()
    from softprompt.io import atomic_write_text, write_json

    write_json(args.output / "serving.json", result)
    atomic_write_text(args.output / "serving.md", markdown(result))
    print(markdown(result))


def run_phases(server: Server, root: Path, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    memory = measure_memory(server, root, repo, args.prompt_length)
    tput = measure_throughput(server, args)
    latency = measure_latency(server, args, tput["generate"]["mixed"])
    promotion = measure_promotion(server, root, repo, args)
    return {
        "device": f"cpu x{os.cpu_count()} ({platform.machine()})", "d_model": memory["d_model"],
        "prompt_length": args.prompt_length, "clients": args.clients, "instances": args.instances,
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "quick": args.quick,
        "rounds": args.rounds, "load_average": args.load_average,
        "throughput": tput, "latency": latency, "memory": memory, "promotion": promotion, "targets": TARGETS,
        "met": {"throughput_ratio": min(t["ratio"] for t in tput.values()) >= TARGETS["throughput_ratio"],
                "memory_per_task": memory["per_task_bytes"] <= memory["budget_bytes"],
                "failed_requests": promotion["failed"] == TARGETS["failed_requests"],
                "swap_seconds": promotion["last_old_version_s"] <= TARGETS["swap_seconds"]
                and promotion["responses_after_swap_all_new"]},
    }


if __name__ == "__main__":
    main()
