"""Running one property against one loader under Hypothesis, outside the pytest plugin."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conformance import properties
from conformance.assertions import PropertyFailure
from conformance.protocol import Capabilities, LoaderAdapter
from strategies import cases, relayouts
from strategies.archs import loras
from strategies.checkpoints import value_seeds


def adapter(loader) -> LoaderAdapter:
    caps = Capabilities.coerce(getattr(loader, "capabilities", None))
    return LoaderAdapter(spec=getattr(loader, "name", "test loader"), target=loader, capabilities=caps)


MAX_RANKS = 8


def _check(name: str, loader: LoaderAdapter, case, data) -> None:
    if name == "lora_equivalence" and case.arch.lora is None:
        lora = data.draw(loras(moe=case.arch.moe is not None), label="lora")
        case = replace(case, arch=replace(case.arch, lora=lora))
    if name == "reload":
        properties.reload(loader, case, data.draw(value_seeds(), label="second seed"))
    elif name == "missing_tensor":
        dropped = data.draw(st.sampled_from(properties.needed_tensors(case)), label="dropped")
        properties.missing_tensor(loader, case, dropped)
    elif name == "invariance":
        properties.invariance(loader, case, data.draw(relayouts(case.recipe), label="other"))
    else:
        getattr(properties, name)(loader, case)


def search(loader, prop: str, family: str, max_examples: int = 100) -> PropertyFailure | None:
    """The first failure of ``prop`` in ``max_examples`` derandomized examples, or None."""
    wrapped = adapter(loader)

    @settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data):
        max_ranks = MAX_RANKS if prop == "all_ranks" else None
        case = data.draw(cases(family, wrapped.capabilities, max_ranks), label="case")
        _check(prop, wrapped, case, data)

    try:
        run()
    except PropertyFailure as failure:
        return failure
    return None
