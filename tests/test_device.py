"""Inference placement (softprompt.device): the one choice of device and dtype, and every inference path
following it. There is no GPU here, so CUDA's presence is faked for the choice, the meta device stands in for an
accelerator where tensors must follow the model, and bf16 is forced on the CPU with the override."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from support.registry import ENV, init_repo, make_prompt, metrics

from softprompt import device as placement_of
from softprompt import registry
from softprompt.device import Placement, choose_placement
from softprompt.errors import SoftpromptError
from softprompt.models import load_base

CPU_BF16 = Placement(torch.device("cpu"), torch.bfloat16)


def fake_cuda(monkeypatch: pytest.MonkeyPatch, present: bool, native_bf16: bool = True, count: int = 1) -> None:
    """torch sees `count` GPUs (or none); with native_bf16 False they only emulate bf16, like a T4 or V100."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if present else 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: present and (native_bf16 or including_emulation))


def fake_xla(monkeypatch: pytest.MonkeyPatch, ready: bool) -> None:
    monkeypatch.setattr(placement_of, "xla_ready", lambda: ready)
    monkeypatch.setattr(placement_of, "xla_device", lambda: torch.device("xla", 0))


# ------------------------------------------------------------------------------------------------ the choice


def test_auto_takes_cuda_then_xla_then_cpu_with_bf16_only_where_native(monkeypatch):
    fake_cuda(monkeypatch, present=True)
    fake_xla(monkeypatch, ready=True)
    assert choose_placement("auto", "auto") == Placement(torch.device("cuda", 0), torch.bfloat16)
    fake_cuda(monkeypatch, present=True, native_bf16=False)  # emulated bf16 is slower than fp32: not chosen
    assert choose_placement("auto", "auto") == Placement(torch.device("cuda", 0), torch.float32)
    fake_cuda(monkeypatch, present=False)
    assert choose_placement("auto", "auto") == Placement(torch.device("xla", 0), torch.bfloat16)
    fake_xla(monkeypatch, ready=False)
    assert choose_placement("auto", "auto") == Placement(torch.device("cpu"), torch.float32)


def test_the_defaults_come_from_params_yaml_inference(monkeypatch):
    fake_cuda(monkeypatch, present=True)
    assert choose_placement() == Placement(torch.device("cuda", 0), torch.bfloat16)  # inference: auto / auto
    assert choose_placement(dtype="float32").dtype == torch.float32
    assert choose_placement("cuda:0", "bfloat16").to_json() == {"device": "cuda:0", "dtype": "bfloat16"}


@pytest.mark.parametrize(("device", "dtype", "message"), [
    ("cuda", "auto", "'cuda' asked for, but torch sees no CUDA GPU; use auto or cpu"),
    ("cuda:1", "auto", "'cuda:1' asked for, but torch sees no CUDA GPU"),
    ("xla", "auto", "'xla' needs torch_xla and PJRT_DEVICE"),
    ("gpu0", "auto", "--device / inference.device: 'gpu0' is not a device; use auto, cpu, cuda, cuda:N or xla"),
    ("mps", "auto", "'mps' is not supported for inference"),
    ("cpu", "float16", "--dtype / inference.dtype: 'float16' is not a weight dtype; use auto, float32, bfloat16"),
])
def test_an_unusable_choice_is_one_error_naming_the_option(monkeypatch, device, dtype, message):
    fake_cuda(monkeypatch, present=False)
    fake_xla(monkeypatch, ready=False)
    with pytest.raises(SoftpromptError) as e:
        choose_placement(device, dtype)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_gpu_index_past_the_visible_ones_is_refused(monkeypatch):
    fake_cuda(monkeypatch, present=True, count=2)
    assert choose_placement("cuda:1", "float32").device == torch.device("cuda", 1)
    with pytest.raises(SoftpromptError, match="'cuda:2', but only 2 GPU"):
        choose_placement("cuda:2", "auto")


# ------------------------------------------------------------------------------------------------ the base


def test_load_base_places_the_weights_and_keeps_the_float32_fingerprint():
    fp32 = load_base("tiny")
    bf16 = load_base("tiny", placement=CPU_BF16)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    assert bf16.placement == CPU_BF16 and fp32.placement.to_json() == {"device": "cpu", "dtype": "float32"}
    # A prompt trained on the float32 base must still load on the same base in bf16.
    assert bf16.fingerprint == fp32.fingerprint


def test_ensemble_prompts_and_inputs_follow_the_models_device_and_dtype():
    from softprompt.ensemble import PromptEnsemble

    base = load_base("tiny")
    base.model.to(device="meta", dtype=torch.bfloat16)  # an accelerator stand-in: no data, only placement
    ens = PromptEnsemble(base.model, [torch.ones(2, 64), torch.ones(3, 64)])
    assert ens.prompts.device.type == "meta" and ens.prompts.dtype == torch.bfloat16
    assert ens.prompt_mask.device.type == "meta"
    ids, mask = torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)  # built on the CPU
    embeds, full_mask = ens.embed(ids, mask, prompt_index=torch.tensor([0, 1]))
    assert embeds.device.type == full_mask.device.type == "meta"
    assert embeds.shape == (2, 3 + 5, 64) and embeds.dtype == torch.bfloat16


def test_neighbors_compare_on_the_tables_device():
    from softprompt.interpret import nearest_tokens

    table = torch.eye(4, dtype=torch.bfloat16, device="meta")
    with pytest.raises(NotImplementedError):  # meta tensors have no values: reaching .cpu() proves the placement
        nearest_tokens(torch.eye(4)[:2], table, k=2)


# ------------------------------------------------------------------------------------------------ the paths


def test_evaluate_runs_in_bf16_and_its_metrics_json_records_device_and_dtype(rte_dir, tmp_path):
    from softprompt.evaluation import run_evaluation

    prompt = make_prompt(tmp_path / "p", "rte", seed=0)
    for mode in ("generate", "rank"):
        out = tmp_path / f"{mode}.json"
        result = run_evaluation("rte", out, prompt=prompt, data=rte_dir, mode=mode, batch_size=4, progress=False,
                                device="cpu", dtype="bfloat16")
        saved = json.loads(out.read_text())
        assert saved["device"] == "cpu" and saved["dtype"] == "bfloat16" == result["dtype"]
        predictions = (tmp_path / f"{mode}.predictions.jsonl").read_text().splitlines()
        assert saved["num_examples"] == 8 and len(predictions) == 8


def evaluate_rank(prompt, data, out):
    """`evaluate --mode rank --limit 2` on RTE with the placement params.yaml asks for (auto)."""
    from softprompt.evaluation import run_evaluation

    return run_evaluation("rte", out, prompt=prompt, data=data, mode="rank", limit=2, progress=False)


def test_evaluate_on_auto_without_an_accelerator_stays_float32_on_the_cpu(rte_dir, tmp_path, monkeypatch):
    fake_cuda(monkeypatch, present=False)  # also on a GPU machine
    prompt = make_prompt(tmp_path / "p", "rte", seed=0)
    result = evaluate_rank(prompt, rte_dir, tmp_path / "m.json")
    assert (result["device"], result["dtype"]) == ("cpu", "float32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (the lock's torch is the CPU build)")
def test_on_a_gpu_auto_puts_the_base_and_the_batches_on_it(rte_dir, tmp_path):
    from softprompt.serving.engine import PromptSet, Row, load_served_prompt

    prompt = make_prompt(tmp_path / "p", "rte", seed=0)
    result = evaluate_rank(prompt, rte_dir, tmp_path / "m.json")
    expected = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float32"
    assert (result["device"], result["dtype"]) == ("cuda:0", expected)
    base = load_base("tiny", placement=choose_placement())
    assert {str(p.device) for p in base.model.parameters()} == {"cuda:0"}
    snapshot = PromptSet(base, {"rte": load_served_prompt(base, "rte", prompt, "v1")})
    assert snapshot.ensemble.prompts.device == torch.device("cuda", 0)
    fields = {"premise": "The cat sat.", "hypothesis": "A cat sat."}
    answers = snapshot.run([Row("rte", fields), Row("rte", fields, mode="rank")])
    assert answers[1]["label"] in answers[1]["scores"] and isinstance(answers[0]["label"], str)


def test_evaluate_command_takes_device_and_dtype(rte_dir, tmp_path):
    prompt = make_prompt(tmp_path / "p", "rte", seed=0)
    cli = [sys.executable, "-m", "softprompt.cli", "evaluate", "--task", "rte", "--prompt", str(prompt), "--data",
           str(rte_dir), "--limit", "2", "--mode", "rank"]
    ok = subprocess.run([*cli, "--output", str(tmp_path / "m.json"), "--dtype", "bfloat16"], env=ENV,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "m.json").read_text())["dtype"] == "bfloat16"
    bad = subprocess.run([*cli, "--output", str(tmp_path / "bad.json"), "--device", "cuda"], env=ENV,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: --device / inference.device: 'cuda' asked for, but torch sees no CUDA GPU; use auto or cpu")
    assert not (tmp_path / "bad.json").exists()


def test_ensemble_and_neighbors_record_their_placement(tmp_path):
    from softprompt.ensemble import run_ensemble
    from softprompt.interpret import run_neighbors

    prompts = [make_prompt(tmp_path / f"p{s}", "rte", seed=s) for s in (0, 1)]
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": "entailment", "idx": i} for i in range(3)]
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for mode in ("generate", "rank"):
        summary = run_ensemble("rte", prompts, tmp_path / mode, data=data, mode=mode, batch_size=4, progress=False,
                               dtype="bfloat16")
        assert summary["num_examples"] == 3 and (summary["device"], summary["dtype"]) == ("cpu", "bfloat16")
    result = run_neighbors(prompts[0], tmp_path / "nb", k=3, dtype="bfloat16")
    saved = json.loads((tmp_path / "nb" / "neighbors.json").read_text())
    assert saved["dtype"] == result["dtype"] == "bfloat16" and len(saved["positions"]) == 4


def test_the_serving_engine_answers_in_bf16(tmp_path):
    from softprompt.serving.engine import PromptSet, Row, load_served_prompt

    base = load_base("tiny", placement=CPU_BF16)
    served = {task: load_served_prompt(base, task, make_prompt(tmp_path / task, task, seed), "v1")
              for task, seed in (("rte", 0), ("cb", 1))}
    snapshot = PromptSet(base, served)
    assert snapshot.ensemble.prompts.dtype == torch.bfloat16
    fields = {"premise": "The cat sat.", "hypothesis": "A cat sat."}
    answers = snapshot.run([Row("rte", fields), Row("cb", fields, mode="rank"), Row("rte", fields, mode="rank")])
    assert [a["task"] for a in answers] == ["rte", "cb", "rte"]
    assert set(answers[1]["scores"]) == {"entailment", "contradiction", "neutral"}
    assert answers[1]["label"] in answers[1]["scores"] and answers[2]["label"] in ("entailment", "not_entailment")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_reports_its_device_and_dtype_in_the_v2_model_metadata(tmp_path):
    repo = init_repo(tmp_path / "repo")
    settings = registry.Settings(remote=str(tmp_path / "remote"), promotion_margin=0.5, lock_timeout=120)
    registry.register(repo, "rte", make_prompt(tmp_path / "p", "rte", 0), metrics(tmp_path, "rte", 50.0),
                      settings=settings, policy="force")
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "softprompt.cli", "serve", "--model", "tiny", "--registry",
                             str(repo), "--tasks", "rte", "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "bfloat16"],
                            env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, meta = time.monotonic() + 600, None  # a loaded 2-core machine starts it slowly
        while meta is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/rte", timeout=30) as resp:
                    meta = json.loads(resp.read())
            except OSError:
                time.sleep(0.3)
        assert meta, f"no metadata (exit {proc.poll()}): {(tmp_path / 'serve.log').read_text()[-2000:]}"
        assert meta["parameters"]["device"] == "cpu" and meta["parameters"]["dtype"] == "bfloat16"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
