"""Component registries, filled through pluggy hooks from the ``hcframe`` entry-point group.

A plugin is any importable object (usually a module) with hook implementations::

    import hcframe

    @hcframe.hookimpl
    def hcframe_register(registry):
        registry.add("task", "speed", SpeedPrediction)

Installed plugins announce themselves in their ``pyproject.toml``::

    [project.entry-points.hcframe]
    my_plugin = "my_package.plugin"

The core's own built-ins (:mod:`hcframe.builtin`) are loaded exactly the same way.

Environment switches (read when the registry is first built, and inherited by spawned processes):

``HCFRAME_DISABLE_PLUGIN_AUTOLOAD=1``  load only the core's entry points and explicit plugins
``HCFRAME_STRICT_PLUGINS=1``           a plugin that fails to import or register is fatal
``HCFRAME_PLUGINS=mod:obj,mod2``        explicit plugins (what ``--plugin`` sets for child processes)
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as metadata
import inspect
import os
import re
import sys
from typing import Any, Callable, Iterable

import attrs
import pluggy

__all__ = [
    "KINDS",
    "ComponentRecord",
    "DuplicateComponentError",
    "PluginError",
    "PluginFailure",
    "Registry",
    "UnknownComponentError",
    "get_registry",
    "hookimpl",
    "hookspec",
    "register_plugin",
    "reset_registry",
]

PROJECT = "hcframe"
ENTRY_POINT_GROUP = "hcframe"
ENV_DISABLE_AUTOLOAD = "HCFRAME_DISABLE_PLUGIN_AUTOLOAD"
ENV_STRICT = "HCFRAME_STRICT_PLUGINS"
ENV_PLUGINS = "HCFRAME_PLUGINS"

KINDS = ("dataset", "transform", "encoder", "head", "task", "teacher", "hook", "logger")

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered (fatal only in strict mode or for duplicates)."""


class DuplicateComponentError(PluginError):
    """Two plugins register the same kind and name: always fatal (neither is wrong alone)."""


#: What a component name may look like (it is written in recipes and on command lines).
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_.\-]*"


class UnknownComponentError(LookupError):
    """No component of that kind and name; the message suggests the closest names."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:  # KeyError-style repr quoting would garble the one-line message
        return self.args[0]


class HookSpecs:
    """The hooks a plugin may implement."""

    @hookspec
    def hcframe_register(self, registry: "Registry") -> None:
        """Add components with ``registry.add(kind, name, factory, summary=...)``."""

    @hookspec
    def hcframe_add_commands(self, cli: Any) -> None:
        """Add click commands to the ``hcframe`` group (``cli.add_command(...)``)."""


def _summary_of(factory: Callable[..., Any]) -> str:
    doc = inspect.getdoc(factory) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@attrs.frozen
class ComponentRecord:
    """One registration: what it is, how to build it, and which distribution provided it."""

    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    name: str = attrs.field(validator=attrs.validators.matches_re(NAME_PATTERN))
    factory: Callable[..., Any] = attrs.field(validator=attrs.validators.is_callable(), repr=False)
    provider: str
    version: str
    summary: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "provider": self.provider,
            "version": self.version,
            "summary": self.summary,
        }


@attrs.frozen
class PluginFailure:
    """A plugin that raised while importing or registering, and was skipped."""

    plugin: str
    provider: str
    error: str


@attrs.frozen
class _Provider:
    name: str
    version: str


class Registry:
    """All components by kind and name. Build one with :func:`get_registry`."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, ComponentRecord]] = {k: {} for k in KINDS}
        self.failures: list[PluginFailure] = []
        self._provider = _Provider("<python>", "")
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(HookSpecs)
        self._providers: dict[str, _Provider] = {}
        self._registering: list[tuple[str, str]] | None = None  # what the running hook added

    # --- adding -------------------------------------------------------------------------------
    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        summary: str | None = None,
    ) -> ComponentRecord:
        """Register ``factory`` (a class or function) as component ``name`` of ``kind``."""
        if kind not in KINDS:
            raise PluginError(f"{self._provider.name}: unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise PluginError(
                f"{self._provider.name}: {kind} name {name!r} is not valid: use letters, digits, '_', '.' and '-', "
                f"starting with a letter or '_'"
            )
        if not callable(factory):
            raise PluginError(f"{self._provider.name}: {kind} {name!r}: {factory!r} is not a class or function")
        record = ComponentRecord(
            kind=kind,
            name=name,
            factory=factory,
            provider=self._provider.name,
            version=self._provider.version,
            summary=_summary_of(factory) if summary is None else summary,
        )
        existing = self._records[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered twice: by {existing.provider} {existing.version} "
                f"and by {record.provider} {record.version}; uninstall one of them"
            )
        self._records[kind][name] = record
        if self._registering is not None:
            self._registering.append((kind, name))
        return record

    def register_plugin(self, plugin: object, name: str, provider: str, version: str = "") -> None:
        """Register a plugin object and run its ``hcframe_register`` hook now.

        All or nothing: when the hook raises, the components it added before that are removed
        and the plugin is unregistered (its commands are not added), then the error is raised."""
        if self._pm.is_registered(plugin) or self._pm.has_plugin(name):
            return
        self._pm.register(plugin, name=name)
        self._providers[name] = _Provider(provider, version)
        added: list[tuple[str, str]] = []
        try:
            for impl in self._pm.hook.hcframe_register.get_hookimpls():
                if impl.plugin_name == name:
                    self._call_register(impl, added)
        except BaseException:
            for kind, component in added:
                self._records[kind].pop(component, None)
            self._pm.unregister(name=name)
            self._providers.pop(name, None)
            raise

    def _call_register(self, impl: Any, added: list[tuple[str, str]]) -> None:
        previous, outer = self._provider, self._registering
        self._provider, self._registering = self._providers[impl.plugin_name], added
        try:
            impl.function(registry=self)
        finally:
            self._provider, self._registering = previous, outer

    def add_commands(self, cli: Any, on_error: Callable[[str, BaseException], None]) -> None:
        """Let every plugin add its CLI commands; a plugin whose hook raises is reported, skipped."""
        for impl in self._pm.hook.hcframe_add_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as exc:  # a broken plugin must not take the CLI down
                on_error(self._providers[impl.plugin_name].name, exc)

    # --- looking up ---------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> ComponentRecord:
        if kind not in KINDS:
            raise UnknownComponentError(f"no component kind {kind!r}; kinds are {', '.join(KINDS)}")
        try:
            return self._records[kind][name]
        except KeyError:
            raise UnknownComponentError(self._unknown_message(kind, name)) from None

    def _unknown_message(self, kind: str, name: str) -> str:
        names = sorted(self._records[kind])
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        installed = ", ".join(names) if names else "none (is the plugin that provides it installed?)"
        return f"no {kind} {name!r}; {hint}installed {kind}s: {installed}"

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Build component ``name`` of ``kind`` with keyword arguments."""
        return self.get(kind, name).factory(**kwargs)

    def list(self, kind: str | None = None, pattern: str | None = None) -> list[ComponentRecord]:
        """Records sorted by kind then name; ``pattern`` is a shell-style filter on names."""
        import fnmatch

        if kind is not None and kind not in KINDS:
            raise UnknownComponentError(f"no component kind {kind!r}; kinds are {', '.join(KINDS)}")
        kinds = KINDS if kind is None else (kind,)
        out = []
        for k in kinds:
            for n in sorted(self._records[k]):
                if pattern is None or fnmatch.fnmatch(n, pattern):
                    out.append(self._records[k][n])
        return out

    def names(self, kind: str) -> list[str]:
        return sorted(self._records[kind])


# --- building the process-wide registry ---------------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _explicit_specs() -> list[str]:
    return [s.strip() for s in os.environ.get(ENV_PLUGINS, "").split(",") if s.strip()]


def _resolve_spec(spec: str) -> object:
    """Import ``module`` or ``module:attribute`` (the only way to name an uninstalled plugin)."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: object = module
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def _load_entry_points(registry: Registry, autoload: bool, strict: bool) -> None:
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name != PROJECT if e.dist else True, e.name))
    for ep in eps:
        dist_name = ep.dist.name if ep.dist is not None else "<unknown distribution>"
        dist_version = ep.dist.version if ep.dist is not None else ""
        if not autoload and dist_name != PROJECT:
            continue
        try:
            plugin = ep.load()
            registry.register_plugin(plugin, name=f"{dist_name}:{ep.name}", provider=dist_name, version=dist_version)
        except DuplicateComponentError:
            raise
        except Exception as exc:  # its registrations were rolled back: it is skipped whole
            failure = PluginFailure(plugin=f"{ep.name} = {ep.value}", provider=dist_name, error=_describe(exc))
            if strict:
                raise PluginError(
                    f"plugin {failure.plugin} from {dist_name} failed to load: {failure.error}"
                ) from exc
            registry.failures.append(failure)


def _register_explicit(registry: Registry, spec: str, strict: bool = True) -> None:
    try:
        plugin = _resolve_spec(spec)
    except Exception as exc:
        message = f"cannot import plugin {spec!r} (named by --plugin or {ENV_PLUGINS}): {type(exc).__name__}: {exc}"
        if strict:
            raise PluginError(message) from exc
        registry.failures.append(PluginFailure(plugin=spec, provider=spec, error=message))
        return
    version = str(getattr(sys.modules.get(spec.partition(":")[0]), "__version__", ""))
    try:
        registry.register_plugin(plugin, name=spec, provider=f"{spec} (explicit)", version=version)
    except DuplicateComponentError:
        raise
    except Exception as exc:  # its registrations were rolled back
        raise PluginError(f"plugin {spec!r} (named by --plugin or {ENV_PLUGINS}) failed to register: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """One line: the message of our own errors, ``Type: first line`` of anything else."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(exc, PluginError) else f"{type(exc).__name__}: {first}"


def build_registry(
    explicit: Iterable[str] = (), autoload: bool | None = None, strict: bool | None = None
) -> Registry:
    """A fresh registry from entry points and explicit ``module:object`` plugins."""
    autoload = not _truthy(os.environ.get(ENV_DISABLE_AUTOLOAD)) if autoload is None else autoload
    strict = _truthy(os.environ.get(ENV_STRICT)) if strict is None else strict
    registry = Registry()
    _load_entry_points(registry, autoload=autoload, strict=strict)
    for spec in explicit:
        _register_explicit(registry, spec)
    return registry


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use (each spawned process builds its own)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry(explicit=_explicit_specs())
    else:  # plugins named since it was built (a second CLI invocation in the same process)
        for spec in _explicit_specs():
            if not _REGISTRY._pm.has_plugin(spec):
                _register_explicit(_REGISTRY, spec)
    return _REGISTRY


def reset_registry() -> None:
    """Forget the process-wide registry (tests, or after changing the environment switches)."""
    global _REGISTRY
    _REGISTRY = None


def register_plugin(plugin: object | str, name: str | None = None) -> None:
    """Register a plugin that is not installed: an object with hook implementations, or a
    ``"module:object"`` string. Strings are also exported to child processes via ``HCFRAME_PLUGINS``
    so DataLoader workers and torchrun ranks rebuild the same registry."""
    registry = get_registry()
    if isinstance(plugin, str):
        specs = _explicit_specs()
        if plugin not in specs:
            os.environ[ENV_PLUGINS] = ",".join([*specs, plugin])
        _register_explicit(registry, plugin)
        return
    label = name or getattr(plugin, "__name__", None) or type(plugin).__qualname__
    registry.register_plugin(plugin, name=label, provider=f"{label} (explicit)")
