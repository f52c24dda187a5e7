"""The loader protocol: what ``--loader`` must name, and how the suite calls it.

A loader is any object with ``build(arch, placement)`` and ``load(model, checkpoint)``; optional
``state(model)``, ``capabilities`` and ``name``, and the optional hooks in ``OPTIONAL_HOOKS``
(a property that needs a hook the loader lacks is reported as not supported).  ``LoaderAdapter`` wraps it once, at start-up,
so that a malformed loader is a usage error before any example runs, never a traceback in the
middle of one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping


FAMILIES = ("llama", "gpt2", "qwen3_moe", "qwen2_moe", "deepseek_v32")
FEATURES = (
    "tensor_parallel",
    "pipeline_parallel",
    "expert_parallel",
    "tied_embeddings",
    "attention_bias",
    "lora",
    "sharded_checkpoint",
    "fused_expert_checkpoint",
    "fp8_per_tensor",
    "fp8_block",
    "cuda",
)
# How the loader presents its state, not what it can load: declared, never "unsupported".
STATE_FORMS = ("fp8_dequantized_state",)


# check_loaded(model, loaded): the loader's own completeness check (vLLM's
#   track_weights_loading): raises naming what was not loaded, silent after a complete load.
# process_weights_after_loading(model): post-load repacking for inference (vLLM's hook).
# linear_forward(model, module, x): apply this rank's linear layer ``module`` (a canonical
#   runtime parameter name without ``.weight``) to ``x`` [B, K_local], giving [B, N_local].
OPTIONAL_HOOKS = ("state", "check_loaded", "process_weights_after_loading", "linear_forward")


class LoaderSpecError(ValueError):
    """``--loader`` names nothing usable; the message says what is wrong."""


def _names(key: str, value: Any) -> frozenset[str]:
    """A collection of names as a frozenset; a bare string or a non-collection is an error."""
    items = None
    if not isinstance(value, (str, bytes)) and isinstance(value, Iterable):
        items = list(value)
    if items is None or not all(isinstance(item, str) for item in items):
        raise LoaderSpecError(
            f"capabilities {key} must be a collection of names such as {{'llama'}}, "
            f"not {value!r}"
        )
    return frozenset(items)


@dataclass(frozen=True)
class Capabilities:
    """What a loader supports.  Examples outside it are never generated.

    ``families`` are HF model types; ``features`` are names from ``FEATURES``.  The default is
    everything in ``FEATURES``.  ``STATE_FORMS`` are not kinds of case but the form of the
    state, declared the same way: ``fp8_dequantized_state`` is for loaders that dequantise FP8
    checkpoints at load (transformers on CPU): their FP8 weights are compared with the
    dequantisation definition in the model dtype, and they have no scale parameters.
    """

    families: frozenset[str] = field(default_factory=lambda: frozenset(FAMILIES))
    features: frozenset[str] = field(default_factory=lambda: frozenset(FEATURES))

    def __post_init__(self) -> None:
        for key in ("families", "features"):
            object.__setattr__(self, key, _names(key, getattr(self, key)))
        known = set(FEATURES) | set(STATE_FORMS)
        unknown = sorted(self.families - set(FAMILIES)) + sorted(self.features - known)
        if unknown:
            raise LoaderSpecError(
                f"capabilities name unknown families or features {unknown}; "
                f"known families: {list(FAMILIES)}, features: {list(FEATURES + STATE_FORMS)}"
            )

    @classmethod
    def coerce(cls, value: Any) -> "Capabilities":
        if value is None:
            return cls()
        if isinstance(value, Capabilities):
            return value
        if isinstance(value, Mapping):
            extra = set(value) - {"families", "features"}
            if extra:
                raise LoaderSpecError(f"capabilities has unknown keys {sorted(extra)}")
            return cls(**value)
        raise LoaderSpecError(
            f"capabilities must be a Capabilities or a mapping, not {type(value).__name__}"
        )

    def supports(self, feature: str) -> bool:
        return feature in self.features


@dataclass(frozen=True)
class LoaderAdapter:
    """A validated loader.  ``spec`` is the ``--loader`` text, kept for replay commands."""

    spec: str
    target: Any
    capabilities: Capabilities

    @property
    def name(self) -> str:
        return str(getattr(self.target, "name", self.spec))

    def build(self, arch, placement) -> Any:
        return self.target.build(arch, placement)

    def load(self, model, checkpoint) -> set[str] | None:
        loaded = self.target.load(model, checkpoint)
        if loaded is None:
            return None
        if isinstance(loaded, (str, bytes)) or not isinstance(loaded, Iterable):
            raise TypeError(
                f"load() must return a set of runtime parameter names or None, "
                f"not {type(loaded).__name__}"
            )
        return set(loaded)

    def state(self, model) -> dict[str, Any]:
        state_fn: Callable | None = getattr(self.target, "state", None)
        if state_fn is None:
            return dict(model.named_parameters())
        return dict(state_fn(model))

    def hook(self, name: str) -> Callable | None:
        """The loader's optional hook ``name`` (one of ``OPTIONAL_HOOKS``), or None."""
        if name not in OPTIONAL_HOOKS:
            raise ValueError(f"unknown hook {name!r}")
        return getattr(self.target, name, None)


def resolve_loader(spec: str) -> LoaderAdapter:
    """Import ``MODULE[:ATTR]`` and check it implements the protocol."""
    if not spec or spec.count(":") > 1 or spec.startswith(":") or spec.endswith(":"):
        raise LoaderSpecError(f"--loader={spec!r} is not of the form MODULE[:ATTR]")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and module_name.split(".")[
            : len(exc.name.split("."))
        ] == exc.name.split("."):
            raise LoaderSpecError(
                f"--loader={spec!r}: no module named {exc.name!r} (is it installed, "
                f"or is the current directory on sys.path?)"
            ) from None
        raise LoaderSpecError(
            f"--loader={spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:  # the loader module itself is broken
        raise LoaderSpecError(
            f"--loader={spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    if attr:
        if not hasattr(module, attr):
            raise LoaderSpecError(f"--loader={spec!r}: module {module_name!r} has no {attr!r}")
        target = getattr(module, attr)
    else:
        target = getattr(module, "loader", module)
    missing = [m for m in ("build", "load") if not callable(getattr(target, m, None))]
    if missing:
        raise LoaderSpecError(
            f"--loader={spec!r}: {target!r} lacks callable {' and '.join(missing)}(); "
            "a loader needs build(arch, placement) and load(model, checkpoint)"
        )
    for hook in OPTIONAL_HOOKS:
        value = getattr(target, hook, None)
        if value is not None and not callable(value):
            raise LoaderSpecError(f"--loader={spec!r}: {hook} must be callable")
    caps = Capabilities.coerce(getattr(target, "capabilities", None))
    return LoaderAdapter(spec=spec, target=target, capabilities=caps)
