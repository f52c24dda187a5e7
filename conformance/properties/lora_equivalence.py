"""LoRA wrapping: a wrapped model (``...base_layer.weight``) loads exactly the base weights the
unwrapped one does, and tracks the ``base_layer`` parameters, never the LoRA A/B tensors."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import reject

from weightcheck.arch import LoRA
from weightcheck.families import family
from weightcheck.strategies.archs import loras

from ..assertions import fail
from .base import Outcome, Property, context, expected, load_or_fail, mismatches, tracking_problems


def strip_lora(name: str) -> str:
    return name.replace(".base_layer.", ".")


class LoraEquivalence(Property):
    name = "lora_equivalence"
    label = "LoRA"
    feature = "lora"
    lora = True

    def not_applicable(self, case):
        return "the case has no LoRA wrapping" if case.arch.lora is None else None

    def draw(self, data, case, caps):
        """A wrapping of the targets the loader can hold at this placement (its
        ``Capabilities.placements`` sees the arch with LoRA: vLLM cannot wrap MoE experts on
        CPU); shrinks to one target."""
        if case.arch.lora is None:
            arch = case.arch
            held = tuple(
                t for t in family(arch.family).lora_targets
                if caps.placement_reason(case.placement, replace(arch, lora=LoRA(targets=(t,), rank=1))) is None
            )
            if not held:
                reject()  # the loader wraps no target of this family at this placement
            lora = data.draw(loras(arch.family, held), label="lora")
            case = replace(case, arch=replace(arch, lora=lora))
        return case, {}

    def run(self, loader, case, extras):
        if case.arch.lora is None:
            raise ValueError("lora_equivalence needs a case with arch.lora")
        title = "LoRA: the wrapped model's base weights differ from the unwrapped model's"
        plain = replace(case, arch=replace(case.arch, lora=None))
        wrapped = load_or_fail(loader, case, self.label)
        unwrapped = load_or_fail(loader, plain, self.label)
        problems = []
        by_plain_name = {strip_lora(n): n for n in wrapped.state}
        if set(by_plain_name) != set(unwrapped.state):
            problems.append(
                f"parameters only when wrapped: {sorted(set(by_plain_name) - set(unwrapped.state))}; "
                f"only when unwrapped: {sorted(set(unwrapped.state) - set(by_plain_name))}"
            )
        exp = expected(case, wrapped.tensors, loader)
        problems += mismatches(wrapped.state, exp, case, tensors=wrapped.tensors)
        if wrapped.loaded is not None:
            problems += tracking_problems(wrapped.loaded, set(exp.tracked))
        if problems:
            fail(title, problems, context(case))
        return Outcome()
