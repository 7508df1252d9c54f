"""The compiled pipeline spec (`make pipeline-compile`, uploaded in the Kubeflow UI) is a component the KFP
SDK loads back and compiles again, Kubernetes settings included."""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.
import yaml
from kfp import compiler, components, dsl

from pipelines import run
from pipelines.prompt_tuning import PIPELINE_NAME


def test_compiled_spec_loads_as_a_component_and_compiles_again(tmp_path):
    spec = tmp_path / "prompt_tuning.yaml"
    assert run.main(["compile", "--profile", "smoke", "--spec", str(spec)]) == 0
    original, original_platform = yaml.safe_load_all(spec.read_text())

    loaded = components.load_component_from_file(str(spec))
    assert loaded.name == PIPELINE_NAME
    declared = original["root"]["inputDefinitions"]["parameters"]
    assert set(loaded.component_spec.inputs) == set(declared)
    assert {n: i.default for n, i in loaded.component_spec.inputs.items()} == {
        n: p.get("defaultValue") for n, p in declared.items()}

    @dsl.pipeline(name="wrapper")
    def wrapper(task: str = "cb"):
        loaded(task=task)

    again = tmp_path / "wrapper.yaml"
    compiler.Compiler().compile(wrapper, str(again))
    outer, platform = yaml.safe_load_all(again.read_text())
    assert list(outer["root"]["dag"]["tasks"]) == [PIPELINE_NAME]
    assert outer["deploymentSpec"]["executors"] == original["deploymentSpec"]["executors"]  # same steps, images
    assert platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"] == \
        original_platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]  # secrets, node selectors
