"""The FP8 device checks of the GPU-marked suite, run here on CPU.

``conformance/test_gpu.py`` runs them on CUDA; their logic (and the proof that each can fail)
must not depend on having a GPU, so this module runs them with the model on CPU, where
``torch._scaled_mm`` also exists for FP8.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcheck.conformance import device_checks
from weightcheck.conformance.assertions import PropertyFailure
from weightcheck.families import FAMILIES
from weightcheck.reference_models.reference_loader import loader as reference
from weightcheck.reference_models.reference_loader.layers import LinearBase
from weightcheck.reference_models.reference_loader.loader import ReferenceLoader
from weightcheck.strategies.cases import fp8_cases

from weightcheck.conformance.search import adapter
from weightcheck.reference_models.mutants import BY_NAME
from weightcheck.conformance.profiles import CASE_HEALTH_CHECKS

FP8_FAMILIES = {f.name: f.fp8_methods for f in FAMILIES.values() if f.fp8_methods}

FEW = settings(max_examples=15, deadline=None, database=None, derandomize=True,
               suppress_health_check=CASE_HEALTH_CHECKS)


def _cases(family, methods):
    return fp8_cases(family, adapter(reference).capabilities, methods)


class ScaleNotRequantized(ReferenceLoader):
    """Post-processing keeps one scale for a fused per-tensor layer (the max) but forgets to
    requantise the shards' weights to it: every shard but the max-scale one is now off."""

    name = "mutant scale_not_requantized"

    def process_weights_after_loading(self, model):
        for module in model.modules():
            if isinstance(module, LinearBase) and module.quant is not None and hasattr(module, "weight_scale"):
                if module.weight_scale.numel() > 1:
                    module.weight_scale = torch.nn.Parameter(module.weight_scale.data.max().clone(), requires_grad=False)


@pytest.mark.parametrize("family", sorted(FP8_FAMILIES))
def test_reference_passes_the_device_checks_on_cpu(family):
    @FEW
    @given(case=_cases(family, FP8_FAMILIES[family]))
    def check(case):
        device_checks.bytes_on_device(adapter(reference), case)
        device_checks.post_load_preserves_function(adapter(reference), case)
        if case.arch.quant.method == "fp8_per_tensor":
            device_checks.scaled_mm_matches(adapter(reference), case)

    check()


@FEW
@given(
    rows=st.integers(1, 20), cols=st.integers(1, 20),
    block=st.none() | st.tuples(st.integers(1, 7), st.integers(1, 7)), seed=st.integers(0, 2**31),
)
def test_dequantization_check_on_cpu(rows, cols, block, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen).to(torch.float8_e4m3fn)
    shape = () if block is None else (-(-rows // block[0]), -(-cols // block[1]))
    device_checks.dequantize_matches_cpu(weight, torch.rand(shape, generator=gen) + 0.5, block, "cpu")


def _first_failure(loader, check, family, methods):
    found = []

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=CASE_HEALTH_CHECKS)
    @given(case=_cases(family, methods))
    def search(case):
        if found:
            return
        try:
            check(adapter(loader), case)
        except PropertyFailure as failure:
            found.append(failure)

    search()
    return found[0] if found else None


def test_post_load_check_catches_a_scale_without_requantisation():
    failure = _first_failure(ScaleNotRequantized(), device_checks.post_load_preserves_function,
                             "llama", ("fp8_per_tensor",))
    assert failure is not None
    assert "qkv_proj" in str(failure) or "gate_up_proj" in str(failure)


def test_scaled_mm_check_catches_collapsed_shard_scales():
    failure = _first_failure(BY_NAME["fused_scales_collapsed"].loader, device_checks.scaled_mm_matches,
                             "llama", ("fp8_per_tensor",))
    assert failure is not None and "torch._scaled_mm" in str(failure)


def test_device_checks_need_the_post_load_hooks():
    class NoHooks:
        capabilities = None

        def build(self, arch, placement):
            return reference.build(arch, placement)

        def load(self, model, checkpoint):
            return reference.load(model, checkpoint)

    from weightcheck.conformance.properties import NotSupported

    @settings(max_examples=1, database=None, deadline=None)
    @given(case=_cases("llama", ("fp8_block",)))
    def run(case):
        with pytest.raises(NotSupported):
            device_checks.post_load_preserves_function(adapter(NoHooks()), case)

    run()


def test_the_gpu_tests_harness_path_runs_on_cpu():
    """What conformance/test_gpu.py calls, with the device swapped for CPU."""
    from weightcheck.conformance.harness import Harness

    harness = Harness(adapter(reference))

    @FEW
    @given(data=st.data())
    def run(data):
        harness.check("roundtrip", data, "deepseek_v32", device="cpu")
        harness.check_device(device_checks.bytes_on_device, data, "llama", FP8_FAMILIES["llama"], device="cpu")
        harness.check_device(
            device_checks.post_load_preserves_function, data, "qwen2_moe", FP8_FAMILIES["qwen2_moe"], device="cpu"
        )

    run()
    assert harness.counts[""]["examples"] >= 3 * 15


def test_device_check_catches_a_state_left_on_another_device():
    class StateElsewhere(ReferenceLoader):
        def state(self, model):
            return {n: t.to("meta") for n, t in super().state(model).items()}

    failure = _first_failure(StateElsewhere(), device_checks.bytes_on_device, "llama", ("fp8_block",))
    assert failure is not None and "parameters not on cpu" in str(failure)
