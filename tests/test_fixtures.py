"""Checkpoint materialisation: real safetensors in HF layout, order kept, values from the seed."""

import json

import torch
from hypothesis import given, settings
from safetensors import safe_open

from weightcheck.fixtures.case import Case
from weightcheck.checkpoint import Checkpoint
from weightcheck.fixtures.materialize import case_tensors, directory_digest, scratch_dir, write_case
from weightcheck.strategies import cases


@settings(max_examples=30, deadline=None)
@given(case=cases("llama") | cases("gpt2"))
def test_written_checkpoint_reads_back_in_stored_order(case):
    tensors = case_tensors(case)
    with scratch_dir() as path:
        ckpt = write_case(case, path, tensors=tensors)
        assert ckpt.names() == list(case.recipe.names)
        for name, tensor in Checkpoint.open(path).weights():
            assert torch.equal(tensor, tensors[name]) and tensor.dtype == tensors[name].dtype
        files = sorted(p.name for p in path.iterdir())
        if len(case.recipe.files) == 1:
            assert files == ["config.json", "model.safetensors"]
        else:
            index = json.loads((path / "model.safetensors.index.json").read_text())
            assert set(index["weight_map"]) == set(case.recipe.names)
            for name, file in index["weight_map"].items():  # safetensors' own reader agrees
                with safe_open(str(path / file), framework="pt") as f:
                    assert name in f.keys()
        config = json.loads((path / "config.json").read_text())
        assert config["model_type"] == case.arch.family


@settings(max_examples=20, deadline=None)
@given(case=cases("llama"))
def test_values_depend_only_on_seed_and_name(case):
    again = Case.from_dict(json.loads(case.to_json()))
    assert again == case
    reversed_recipe = type(case.recipe)(case.recipe.value_seed, (tuple(reversed(case.recipe.names)),))
    a, b = case_tensors(case), case_tensors(case, reversed_recipe)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_scratch_dir_is_removed_even_on_error():
    try:
        with scratch_dir() as path:
            (path / "x").write_text("x")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not path.exists()


def test_directory_digest_sees_content_changes():
    with scratch_dir() as path:
        (path / "a").write_bytes(b"1")
        before = directory_digest(path)
        (path / "a").write_bytes(b"2")
        assert directory_digest(path) != before
