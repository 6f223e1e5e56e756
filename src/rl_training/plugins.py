"""Plugin discovery: the built-in sinks and every ``rl_training`` entry point, through one hook."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import types
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pluggy

from rl_training import hookspecs
from rl_training.errors import ConfigError
from rl_training.experiment.logging import SinkFactory

DEFAULT_PLUGINS: tuple[str, ...] = (
    "rl_training.experiment.sinks.jsonl",
    "rl_training.experiment.sinks.tensorboard",
)
"""Modules registered on every plugin manager, ahead of third-party entry points."""

DISABLE_AUTOLOAD_ENV = "RL_TRAINING_DISABLE_PLUGIN_AUTOLOAD"
"""Set to ``1`` to load the built-in sinks only."""

_SELF_DISTRIBUTION = "rl-training"


class PluginLoadWarning(RuntimeWarning):
    """A plugin could not be loaded, or its hook raised; every other sink still works."""


class SinkNameConflictWarning(RuntimeWarning):
    """Two plugins offer the same sink name; that name is refused, the rest work."""


@dataclass(frozen=True)
class SinkInfo:
    """One available sink and who provides it."""

    name: str
    """The name typed after ``--log-sinks``."""
    factory: SinkFactory
    """``factory(run_context) -> Sink``."""
    plugin: str
    """The plugin (module or entry point) whose hook offered it."""
    distribution: str
    """The installed distribution providing it (``rl-training`` for built-ins)."""
    version: str
    """That distribution's version."""

    @property
    def provider(self) -> str:
        """``distribution version (plugin)``, as listings and messages show it."""
        return f"{self.distribution} {self.version} ({self.plugin})"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed to load or whose hook raised."""

    entry_point: str
    """``name = value`` of the entry point, or the module name of a built-in."""
    distribution: str
    """The distribution declaring it, with its version."""
    error: str
    """``ExceptionType: message``."""


@dataclass(frozen=True)
class SinkCatalog:
    """Everything discovery found: usable sinks, clashing names, failed plugins."""

    sinks: Mapping[str, SinkInfo]
    """Usable sinks by name (clashing names excluded), sorted by name."""
    conflicts: Mapping[str, tuple[SinkInfo, ...]] = field(default_factory=dict)
    """Names offered by more than one plugin -> every provider."""
    failures: tuple[PluginFailure, ...] = ()
    """Plugins that did not load."""

    def resolve(self, names: Iterable[str]) -> list[SinkInfo]:
        """The sinks named, in order.

        Raises:
            ValueError: a name is unknown (the message lists the available sinks) or
                claimed by two plugins (the message names both).
        """
        resolved: list[SinkInfo] = []
        unknown: list[str] = []
        for name in names:
            if name in self.conflicts:
                providers = " and ".join(info.provider for info in self.conflicts[name])
                raise ConfigError(
                    f"log sink {name!r} is offered by more than one plugin: {providers}; "
                    "uninstall one of them"
                )
            if name in self.sinks:
                resolved.append(self.sinks[name])
            else:
                unknown.append(name)
        if unknown:
            available = ", ".join(self.sinks) or "none"
            raise ConfigError(
                f"log_sinks: unknown sink {', '.join(map(repr, unknown))}; "
                f"available sinks: {available}"
            )
        return resolved


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus what it does not record: the distribution behind each
    plugin and the entry points that failed to load."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        #: Entry points that failed to load, in discovery order.
        self.load_failures: list[PluginFailure] = []
        self._distributions: dict[str, tuple[str, str]] = {}

    def distribution_of(self, plugin: object) -> tuple[str, str]:
        """``(distribution name, version)`` of a registered plugin."""
        name = self.get_name(plugin) or ""
        if name in self._distributions:
            return self._distributions[name]
        if name.startswith("rl_training."):
            return _SELF_DISTRIBUTION, _self_version()
        return "(registered directly)", "-"

    def load_entry_points(self) -> None:
        """Load every ``rl_training`` entry point, each on its own.

        Unlike ``load_setuptools_entrypoints``, which stops at the first plugin that
        fails to import, a failure is recorded, warned about with
        :class:`PluginLoadWarning` (naming the entry point and its distribution), and
        the rest still load.
        """
        seen: set[tuple[str, str]] = set()
        # Only the distributions with entry points in the group have their metadata
        # read (parsing every installed package's took ~90 ms a manager). Sorted by
        # name, each in its file's order: sys.path order would make clash messages
        # machine-dependent.
        by_dist: dict[str, list[metadata.EntryPoint]] = {}
        versions: dict[str, str] = {}
        for ep in metadata.entry_points(group=hookspecs.PROJECT_NAME):
            dist = ep.dist
            dist_name = (dist.metadata["Name"] if dist is not None else None) or "?"
            by_dist.setdefault(dist_name, []).append(ep)
            versions.setdefault(dist_name, (dist.version if dist is not None else None) or "?")
        for dist_name in sorted(by_dist, key=str.lower):
            for ep in by_dist[dist_name]:
                if (ep.name, ep.value) in seen:
                    continue
                seen.add((ep.name, ep.value))  # a dist found twice on sys.path loads once
                if self.is_blocked(ep.name):
                    continue
                # Two packages may pick one entry-point name: load both (their sink
                # names are then checked for clashes) rather than silently keep one.
                name = ep.name if self.get_plugin(ep.name) is None else f"{ep.name} ({dist_name})"
                try:
                    plugin = ep.load()
                    if self.is_registered(plugin):  # one module behind two entry points
                        continue
                    self.register(plugin, name=name)
                except BaseException as error:  # any broken plugin (SystemExit too), reported
                    if isinstance(error, KeyboardInterrupt):
                        raise
                    failure = PluginFailure(
                        entry_point=f"{ep.name} = {ep.value}",
                        distribution=f"{dist_name} {versions[dist_name]}",
                        error=f"{type(error).__name__}: {error}",
                    )
                    self.load_failures.append(failure)
                    warnings.warn(
                        f"rl_training plugin {failure.entry_point!r} from "
                        f"{failure.distribution} failed to load and is skipped: {failure.error}",
                        PluginLoadWarning,
                        stacklevel=3,
                    )
                    continue
                self._distributions[name] = (dist_name, versions[dist_name])


def get_plugin_manager(*, autoload: bool | None = None) -> PluginManager:
    """A new plugin manager with the built-ins and (unless disabled) every entry point.

    Args:
        autoload: Load third-party entry points; by default, unless
            ``RL_TRAINING_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value
            other than ``0``.
    """
    pm = PluginManager()
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")
    if autoload:
        pm.load_entry_points()
    return pm


def _self_version() -> str:
    try:
        return metadata.version(_SELF_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def discover_sinks(pm: PluginManager | None = None) -> SinkCatalog:
    """Ask every plugin for its sinks and sort out clashes and failures.

    A name offered twice warns with :class:`SinkNameConflictWarning` naming the name
    and both providers; a hook that raises warns with :class:`PluginLoadWarning`.
    """
    pm = pm if pm is not None else get_plugin_manager()
    failures = list(pm.load_failures)
    offered: dict[str, list[SinkInfo]] = {}
    # Each implementation is called on its own (not through pm.hook...()) so that every
    # offer is credited to its plugin and one raising hook cannot hide the others.
    # get_hookimpls() is in registration order: built-ins first, then entry points.
    for impl in pm.hook.rl_training_log_sinks.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        dist_name, version = pm.distribution_of(impl.plugin)
        try:
            offers = impl.function()
            if not isinstance(offers, Mapping):
                raise TypeError(
                    f"rl_training_log_sinks() returned {type(offers).__name__}, not a mapping"
                )
            for name, factory in offers.items():
                if not isinstance(name, str) or not callable(factory):
                    raise TypeError(
                        f"sink {name!r} -> {factory!r} is not a name and a callable factory"
                    )
        except BaseException as error:  # a broken plugin must not hide the rest
            if isinstance(error, KeyboardInterrupt):
                raise
            failure = PluginFailure(
                plugin_name, f"{dist_name} {version}", f"{type(error).__name__}: {error}"
            )
            failures.append(failure)
            warnings.warn(
                f"rl_training plugin {plugin_name!r} from {failure.distribution} raised in "
                f"rl_training_log_sinks() and is skipped: {failure.error}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        for name, factory in offers.items():
            offered.setdefault(name, []).append(
                SinkInfo(name, factory, plugin_name, dist_name, version)
            )
    sinks: dict[str, SinkInfo] = {}
    conflicts: dict[str, tuple[SinkInfo, ...]] = {}
    for name in sorted(offered):
        providers = offered[name]
        if len(providers) == 1:
            sinks[name] = providers[0]
            continue
        conflicts[name] = tuple(providers)
        warnings.warn(
            f"log sink {name!r} is offered by more than one plugin: "
            f"{' and '.join(p.provider for p in providers)}; it cannot be used until one "
            "is uninstalled",
            SinkNameConflictWarning,
            stacklevel=2,
        )
    return SinkCatalog(
        types.MappingProxyType(sinks), types.MappingProxyType(conflicts), tuple(failures)
    )


def available_sinks(pm: PluginManager | None = None) -> Mapping[str, SinkInfo]:
    """Every usable sink by name, with the distribution and version providing it."""
    return discover_sinks(pm).sinks


__all__ = [
    "DEFAULT_PLUGINS",
    "DISABLE_AUTOLOAD_ENV",
    "PluginFailure",
    "PluginLoadWarning",
    "PluginManager",
    "SinkCatalog",
    "SinkInfo",
    "SinkNameConflictWarning",
    "available_sinks",
    "discover_sinks",
    "get_plugin_manager",
]
