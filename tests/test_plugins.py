"""Plugin discovery through pluggy entry points, with real throwaway distributions."""

from __future__ import annotations

from pathlib import Path

import pluggy
import pytest

import rl_training
from rl_training import hookspecs
from rl_training.plugins import (
    DEFAULT_PLUGINS,
    PluginLoadWarning,
    SinkNameConflictWarning,
    available_sinks,
    discover_sinks,
    get_plugin_manager,
)
from rl_training.runtime.run_utils import create_training_run
from rl_training.testing import RECORDING_SINK_PLUGIN


def test_markers_use_the_project_name():
    """hookimpl is pluggy's HookimplMarker('rl_training'), exported at the top level."""
    assert isinstance(rl_training.hookimpl, pluggy.HookimplMarker)
    assert rl_training.hookimpl.project_name == "rl_training"
    assert hookspecs.hookspec.project_name == "rl_training"


def test_builtins_register_through_the_hook(plugin_manager):
    """json and tensorboard come from DEFAULT_PLUGINS via rl_training_log_sinks."""
    names = {
        plugin_manager.get_name(impl.plugin)
        for impl in plugin_manager.hook.rl_training_log_sinks.get_hookimpls()
    }
    assert set(DEFAULT_PLUGINS) <= names
    sinks = available_sinks(plugin_manager)
    assert {"json", "tensorboard"} <= set(sinks)
    assert sinks["json"].distribution == "rl-training"
    assert sinks["json"].version == rl_training_version()


def rl_training_version():
    from importlib.metadata import version

    return version("rl-training")


def test_each_call_gives_a_fresh_manager():
    """get_plugin_manager() keeps no global state between calls."""
    assert get_plugin_manager() is not get_plugin_manager()


def test_entry_point_plugin_is_discovered_with_its_distribution(install_plugin):
    """A distribution's rl_training entry point adds its sinks, credited to it."""
    install_plugin(
        "rl-training-recording", RECORDING_SINK_PLUGIN, entry_name="recording", version="2.5"
    )
    sinks = available_sinks()
    info = sinks["recording"]
    assert (info.distribution, info.version, info.plugin) == (
        "rl-training-recording",
        "2.5",
        "recording",
    )
    assert "rl-training-recording 2.5" in info.provider


def test_autoload_can_be_disabled(install_plugin, monkeypatch):
    """RL_TRAINING_DISABLE_PLUGIN_AUTOLOAD=1 loads the built-in sinks only."""
    install_plugin("rl-training-recording", RECORDING_SINK_PLUGIN, entry_name="recording")
    monkeypatch.setenv("RL_TRAINING_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert set(available_sinks()) == {"json", "tensorboard"}
    monkeypatch.setenv("RL_TRAINING_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "recording" in available_sinks()


def test_broken_import_warns_and_the_rest_load(install_plugin):
    """A plugin that fails to import is named in a warning; every other sink still works."""
    install_plugin("rl-training-broken", "raise ImportError('needs libfoo')\n", entry_name="broken")
    install_plugin("rl-training-recording", RECORDING_SINK_PLUGIN, entry_name="recording")
    with pytest.warns(
        PluginLoadWarning, match=r"'broken = .*' from rl-training-broken 1.0.*needs libfoo"
    ):
        catalog = discover_sinks()
    assert {"json", "tensorboard", "recording"} <= set(catalog.sinks)
    (failure,) = catalog.failures
    assert failure.distribution == "rl-training-broken 1.0"
    assert "ImportError: needs libfoo" in failure.error


def test_hook_that_raises_warns_and_the_rest_load(install_plugin):
    """A plugin whose hook raises is reported and skipped."""
    install_plugin(
        "rl-training-raising",
        """
        import rl_training

        @rl_training.hookimpl
        def rl_training_log_sinks():
            raise RuntimeError("misconfigured")
        """,
        entry_name="raising",
    )
    with pytest.warns(PluginLoadWarning, match="'raising'.*misconfigured"):
        catalog = discover_sinks()
    assert {"json", "tensorboard"} <= set(catalog.sinks)


DUPLICATE_JSON = """
    import rl_training

    class Other:
        def __init__(self, run_context): pass
        def log_config(self, config): pass
        def log_metrics(self, metrics, step): pass
        def close(self): pass

    @rl_training.hookimpl
    def rl_training_log_sinks():
        return {"json": Other, "other": Other}
"""


def test_duplicate_name_warns_and_refuses_only_that_name(install_plugin, tiny_config):
    """Two providers of 'json': a warning naming both, a ValueError when asked for; others work."""
    install_plugin("rl-training-dup", DUPLICATE_JSON, entry_name="dup")
    with pytest.warns(
        SinkNameConflictWarning, match=r"'json'.*rl-training .*and rl-training-dup 1.0"
    ):
        catalog = discover_sinks()
    assert "json" not in catalog.sinks
    assert {"tensorboard", "other"} <= set(catalog.sinks)
    assert [p.distribution for p in catalog.conflicts["json"]] == ["rl-training", "rl-training-dup"]

    config = tiny_config(log_sinks=("json",))
    with (
        pytest.warns(SinkNameConflictWarning),
        pytest.raises(ValueError, match=r"'json'.*rl-training-dup"),
    ):
        create_training_run(config)
    assert not Path(config.output_dir).exists()

    with pytest.warns(SinkNameConflictWarning):
        run = create_training_run(tiny_config(log_sinks=("tensorboard", "other")))
    run.close()


def test_two_third_party_plugins_clashing(install_plugin):
    """A clash between two third-party packages names both of them."""
    install_plugin("rl-training-recording", RECORDING_SINK_PLUGIN, entry_name="recording")
    install_plugin("rl-training-recording2", RECORDING_SINK_PLUGIN, entry_name="recording2")
    with pytest.warns(
        SinkNameConflictWarning, match="rl-training-recording 1.0.*rl-training-recording2 1.0"
    ):
        catalog = discover_sinks()
    with pytest.raises(ValueError, match="'recording'"):
        catalog.resolve(["recording"])


def test_resolve_keeps_the_requested_order(plugin_manager):
    """resolve() returns sinks in the order they were named."""
    catalog = discover_sinks(plugin_manager)
    assert [i.name for i in catalog.resolve(["tensorboard", "json"])] == ["tensorboard", "json"]


def test_two_packages_with_one_entry_point_name_are_both_loaded(install_plugin):
    """One entry-point name in two distributions: both load, and their sink clash is loud."""
    install_plugin("rl-training-recording", RECORDING_SINK_PLUGIN, entry_name="recording")
    install_plugin("rl-training-recording-fork", RECORDING_SINK_PLUGIN, entry_name="recording")
    with pytest.warns(
        SinkNameConflictWarning, match="rl-training-recording 1.0.*rl-training-recording-fork 1.0"
    ):
        catalog = discover_sinks()
    assert "recording" in catalog.conflicts
