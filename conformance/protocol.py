"""The loader protocol: what ``--loader`` must name, and how the suite calls it.

A loader is any object with ``build(arch, placement)`` and ``load(model, checkpoint)``; optional
``state(model)``, ``capabilities`` and ``name``, and the optional hooks in ``OPTIONAL_HOOKS``
(a property that needs a hook the loader lacks is reported as not supported).  ``LoaderAdapter`` wraps it once, at start-up,
so that a malformed loader is a usage error before any example runs, never a traceback in the
middle of one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from weightcheck.capabilities import Capabilities, LoaderSpecError
from weightcheck.checkpoint import LoadReport


# check_loaded(model, loaded): the loader's own completeness check (vLLM's
#   track_weights_loading): raises naming what was not loaded, silent after a complete load.
# process_weights_after_loading(model): post-load repacking for inference (vLLM's hook).
# linear_forward(model, module, x): apply this rank's linear layer ``module`` (a canonical
#   runtime parameter name without ``.weight``) to ``x`` [B, K_local], giving [B, N_local].
# load_ranks(arch, placements, checkpoint): build and load every placement of one world at
#   once (engines that need one process per rank: one world run instead of one per rank);
#   returns, in the order given, each rank's (state, loaded) or the exception it raised.
OPTIONAL_HOOKS = (
    "state",
    "check_loaded",
    "process_weights_after_loading",
    "linear_forward",
    "load_ranks",
)


class AdapterError(Exception):
    """The loader breaks the protocol itself (not a loading bug): e.g. ``load`` returned a list.
    Reported once, as the adapter's error, never as a property of the engine."""


def load_report(value: Any, where: str = "load()") -> LoadReport:
    """What ``load`` returned, as a ``LoadReport``: a set of runtime parameter names, None (no
    tracking) or a ``LoadReport``; anything else is an ``AdapterError`` that says what it got."""
    if isinstance(value, LoadReport):
        report = value
    elif value is None or isinstance(value, (set, frozenset)):
        report = LoadReport(loaded=value)
    elif isinstance(value, (list, tuple)):
        seen: set = set()
        twice = sorted({n for n in value if n in seen or seen.add(n)}, key=str)
        detail = f"; {twice[0]!r} appears twice in it: was that parameter loaded twice?" if twice else ""
        raise AdapterError(
            f"{where} returned a {type(value).__name__}, not a set of runtime parameter names "
            f"(or None for no tracking, or a weightcheck.LoadReport){detail}"
        )
    else:
        raise AdapterError(
            f"{where} must return a set of runtime parameter names, None or a weightcheck.LoadReport, "
            f"not {type(value).__name__}: {value!r:.80}"
        )
    names = [*(report.loaded or ()), *report.unexpected]
    if not all(isinstance(n, str) for n in names):
        raise AdapterError(f"{where} must report names (str); got {sorted(map(repr, names))[:5]}")
    return report


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

    def load(self, model, checkpoint) -> LoadReport:
        return load_report(self.target.load(model, checkpoint))

    def state(self, model) -> dict[str, Any]:
        state_fn: Callable | None = getattr(self.target, "state", None)
        if state_fn is None:
            return dict(model.named_parameters())
        return dict(state_fn(model))

    def defaults(self) -> "AdapterDefaults":
        """The expectations file and regression cases the adapter ships (``expectations``,
        ``regressions`` attributes: paths), used unless ``--no-adapter-defaults``."""
        return AdapterDefaults(
            _path(self.target, "expectations", file=True), _path(self.target, "regressions", file=False)
        )

    def hook(self, name: str) -> Callable | None:
        """The loader's optional hook ``name`` (one of ``OPTIONAL_HOOKS``), or None."""
        if name not in OPTIONAL_HOOKS:
            raise ValueError(f"unknown hook {name!r}")
        return getattr(self.target, name, None)


@dataclass(frozen=True)
class AdapterDefaults:
    expectations: Path | None
    regressions: Path | None


def _path(target: Any, attribute: str, *, file: bool) -> Path | None:
    value = getattr(target, attribute, None)
    if value is None:
        return None
    path = Path(value)
    if not (path.is_file() if file else path.is_dir()):
        kind = "file" if file else "directory"
        raise LoaderSpecError(f"the loader's {attribute} = {value!r} is not an existing {kind}")
    return path


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
    adapter = LoaderAdapter(spec=spec, target=target, capabilities=caps)
    adapter.defaults()  # a declared expectations file or regressions directory must exist
    return adapter
