"""CompositeLogger: validation, normalisation, fan-out, failures, closing."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from rl_training.experiment.logging import (
    CompositeLogger,
    Logger,
    SinkFailureWarning,
    normalize_config,
)


class Recorder:
    """A sink that records every call, sharing one journal with its siblings."""

    delivery = "inline"  # these tests are about the composite's own, in-thread fan-out

    def __init__(self, name, journal):
        self.name = name
        self.journal = journal

    def log_config(self, config):
        self.journal.append((self.name, "config", config))

    def log_metrics(self, metrics, step):
        self.journal.append((self.name, "metrics", dict(metrics), step))

    def close(self, status="finished"):
        self.journal.append((self.name, "close", status))


class NoStatusRecorder(Recorder):
    """A sink whose close() takes no status."""

    def close(self):
        self.journal.append((self.name, "close"))


class Broken(Recorder):
    """A sink that raises in the named method."""

    def __init__(self, name, journal, fails_in):
        super().__init__(name, journal)
        self.fails_in = fails_in

    def log_config(self, config):
        if self.fails_in == "log_config":
            raise OSError("disk full")
        super().log_config(config)

    def log_metrics(self, metrics, step):
        if self.fails_in == "log_metrics":
            raise OSError("disk full")
        super().log_metrics(metrics, step)

    def close(self, status="finished"):
        if self.fails_in == "close":
            raise OSError("disk full")
        super().close(status)


@pytest.fixture
def journal():
    return []


@pytest.fixture
def logger(journal):
    return CompositeLogger({"a": Recorder("a", journal), "b": Recorder("b", journal)})


def test_is_a_logger(logger):
    """CompositeLogger satisfies the Logger protocol."""
    assert isinstance(logger, Logger)


def test_fans_out_in_order(logger, journal):
    """Every call reaches every sink, in the order the sinks were given."""
    logger.log_config({"x": 1})
    logger.log_metrics({"m": 1.5}, 3)
    logger.close()
    assert journal == [
        ("a", "config", {"x": 1}),
        ("b", "config", {"x": 1}),
        ("a", "metrics", {"m": 1.5}, 3),
        ("b", "metrics", {"m": 1.5}, 3),
        ("a", "close", "finished"),
        ("b", "close", "finished"),
    ]


def test_normalises_numpy_and_torch_to_plain_python(logger, journal):
    """Sinks receive plain int/float/bool, whatever the caller passed."""
    logger.log_metrics(
        {
            "np/f32": np.float32(0.5),
            "np/i64": np.int64(7),
            "np/u8": np.uint8(3),
            "np/bool": np.bool_(True),
            "np/arr": np.array([2.5]),
            "np/arr0d": np.array(4),
            "t/f": torch.tensor(1.25),
            "t/i": torch.tensor(9),
            "t/b": torch.tensor(False),
            "t/one": torch.ones(1, 1),
            "t/grad": torch.tensor(2.0, requires_grad=True) * 2,
            "py/int": 1,
            "py/bool": True,
        },
        np.int64(12),
    )
    (_, _, metrics, step) = journal[0]
    assert type(step) is int and step == 12
    expected = {
        "np/f32": (float, 0.5),
        "np/i64": (int, 7),
        "np/u8": (int, 3),
        "np/bool": (bool, True),
        "np/arr": (float, 2.5),
        "np/arr0d": (int, 4),
        "t/f": (float, 1.25),
        "t/i": (int, 9),
        "t/b": (bool, False),
        "t/one": (float, 1.0),
        "t/grad": (float, 4.0),
        "py/int": (int, 1),
        "py/bool": (bool, True),
    }
    assert {k: (type(v), v) for k, v in metrics.items()} == expected
    assert list(metrics) == list(expected)


def test_torch_integer_step_is_accepted(logger, journal):
    """A one-element torch integer tensor is a valid step."""
    logger.log_metrics({"m": 1.0}, torch.tensor(5))
    assert journal[0][3] == 5 and type(journal[0][3]) is int


def test_non_finite_values_pass_through_as_floats(logger, journal):
    """NaN and infinities reach sinks as floats (each sink decides how to write them)."""
    logger.log_metrics({"n": float("nan"), "i": np.float64("inf"), "j": torch.tensor(-math.inf)}, 0)
    metrics = journal[0][2]
    assert math.isnan(metrics["n"]) and metrics["i"] == math.inf and metrics["j"] == -math.inf


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("1.0", "str"),
        (None, "NoneType"),
        (1 + 2j, "complex"),
        (np.complex64(1), "complex"),
        (np.array([1.0, 2.0]), "2 elements"),
        (np.array([]), "0 elements"),
        (torch.tensor([1.0, 2.0]), "2 elements"),
        (torch.tensor(1 + 1j), "complex"),
        (np.array("x"), "not a real number"),
        ([1.0], "list"),
    ],
)
def test_bad_value_names_the_key_and_writes_nothing(logger, journal, bad, fragment):
    """A bad value anywhere in the call raises TypeError naming its key; no sink sees the call."""
    with pytest.raises(TypeError, match="'bad/key'") as info:
        logger.log_metrics({"good/first": 1.0, "bad/key": bad, "good/last": 2.0}, 0)
    assert fragment in str(info.value)
    assert journal == []


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (-1, ValueError),
        (1.5, TypeError),
        (2.0, TypeError),
        (True, TypeError),
        ("3", TypeError),
        (None, TypeError),
        (np.float64(1), TypeError),
        (torch.tensor(1.0), TypeError),
        (np.int64(-2), ValueError),
    ],
)
def test_bad_step_is_rejected(logger, journal, step, error):
    """Negative, fractional, bool and non-numeric steps are rejected before any sink is called."""
    with pytest.raises(error, match="step"):
        logger.log_metrics({"m": 1.0}, step)
    assert journal == []


@pytest.mark.parametrize("key", ["step", "time", ""])
def test_reserved_or_empty_keys_are_rejected(logger, journal, key):
    """'step', 'time' and '' cannot be metric names."""
    with pytest.raises(ValueError, match=repr(key)):
        logger.log_metrics({key: 1.0}, 0)
    assert journal == []


def test_non_string_key_is_rejected(logger, journal):
    """Metric keys must be strings."""
    with pytest.raises(TypeError, match="not a string"):
        logger.log_metrics({1: 1.0}, 0)
    assert journal == []


def test_empty_metrics_write_nothing(logger, journal):
    """An empty mapping reaches no sink."""
    logger.log_metrics({}, 0)
    assert journal == []


def test_config_is_normalised_to_json_types(logger, journal, tmp_path):
    """Paths become str, tuples lists, numpy and torch scalars numbers, nested mappings dicts."""
    logger.log_config(
        types.MappingProxyType(
            {
                "path": tmp_path,
                "tuple": (1, 2),
                "np": np.float32(0.5),
                "t": torch.tensor(3),
                "nested": {"set": {2, 1}, "obj": object},
                7: "int key",
            }
        )
    )
    config = journal[0][2]
    assert config == {
        "path": str(tmp_path),
        "tuple": [1, 2],
        "np": 0.5,
        "t": 3,
        "nested": {"set": [1, 2], "obj": str(object)},
        "7": "int key",
    }


def test_normalize_config_handles_the_train_config(tiny_config):
    """A TrainConfig becomes its JSON-shaped to_dict()."""
    config = normalize_config(tiny_config(hyperparams={"n_steps": 16}))
    assert config["algo"] == "ppo"
    assert config["hyperparams"] == {"n_steps": 16}
    assert config["resolved_hyperparams"]["n_steps"] == 16
    assert config["resolved_hyperparams"]["net_arch"] == [64, 64]


def test_calls_after_close_raise(logger):
    """log_metrics and log_config raise RuntimeError after close(); close() again is fine."""
    logger.close()
    with pytest.raises(RuntimeError, match="closed"):
        logger.log_metrics({"m": 1.0}, 0)
    with pytest.raises(RuntimeError, match="closed"):
        logger.log_config({})
    logger.close()


def test_close_passes_status_only_where_accepted(journal):
    """close(status=...) reaches sinks that accept it; others get close()."""
    logger = CompositeLogger({"a": Recorder("a", journal), "n": NoStatusRecorder("n", journal)})
    logger.close("interrupted")
    assert journal == [("a", "close", "interrupted"), ("n", "close")]


def test_bad_status_is_rejected(logger):
    """close() only takes the three statuses."""
    with pytest.raises(ValueError, match="'done'"):
        logger.close("done")


@pytest.mark.parametrize("fails_in", ["log_config", "log_metrics"])
def test_broken_sink_warns_once_and_is_dropped(journal, fails_in):
    """A failing sink is reported once, naming it and the error; the others keep everything."""
    logger = CompositeLogger(
        {"bad": Broken("bad", journal, fails_in), "good": Recorder("good", journal)}
    )
    with pytest.warns(SinkFailureWarning, match=r"'bad'.*OSError: disk full") as record:
        logger.log_config({"x": 1})
        logger.log_metrics({"m": 1.0}, 0)
    assert len(record) == 1
    logger.log_metrics({"m": 2.0}, 1)
    logger.close()
    assert logger.sink_names == ()
    good = [entry for entry in journal if entry[0] == "good"]
    assert good == [
        ("good", "config", {"x": 1}),
        ("good", "metrics", {"m": 1.0}, 0),
        ("good", "metrics", {"m": 2.0}, 1),
        ("good", "close", "finished"),
    ]
    # the dropped sink was closed (status "failed") when it was dropped
    assert ("bad", "close", "failed") in journal


def test_sink_failing_in_close_is_reported_and_others_close(journal):
    """A close() that raises is warned about; every other sink is still closed."""
    logger = CompositeLogger(
        {"bad": Broken("bad", journal, "close"), "good": Recorder("good", journal)}
    )
    with pytest.warns(SinkFailureWarning, match="'bad' raised in close"):
        logger.close()
    assert ("good", "close", "finished") in journal


def test_strict_mode_raises_after_every_sink_got_the_call(journal):
    """strict=True re-raises the sink's error instead of dropping it, without starving the rest."""
    logger = CompositeLogger(
        {"bad": Broken("bad", journal, "log_metrics"), "good": Recorder("good", journal)},
        strict=True,
    )
    with pytest.raises(OSError, match="disk full"):
        logger.log_metrics({"m": 1.0}, 0)
    assert ("good", "metrics", {"m": 1.0}, 0) in journal
    assert logger.sink_names == ("bad", "good")


def test_context_manager_closes_with_status(journal):
    """Leaving by an exception closes 'failed'; by KeyboardInterrupt, 'interrupted'."""
    with pytest.raises(ZeroDivisionError), CompositeLogger({"a": Recorder("a", journal)}):
        1 / 0  # noqa: B018
    with pytest.raises(KeyboardInterrupt), CompositeLogger({"b": Recorder("b", journal)}):
        raise KeyboardInterrupt
    assert journal == [("a", "close", "failed"), ("b", "close", "interrupted")]


def test_device_tensors_are_gathered_in_one_host_copy():
    """The accelerator path stacks a call's tensors and keeps each one's Python type."""
    from rl_training.experiment.logging import _gather_to_host

    out = {"first": None, "b": None, "i": None, "f": None, "v": None}
    items = [
        ("b", torch.tensor(True)),
        ("i", torch.tensor(2**40)),
        ("f", torch.tensor([0.5])),
        ("v", torch.tensor(3.0, requires_grad=True)),
    ]
    _gather_to_host(items, out)
    assert out == {"first": None, "b": True, "i": 2**40, "f": 0.5, "v": 3.0}
    assert [type(out[k]) for k in ("b", "i", "f", "v")] == [bool, int, float, float]
    same = {"x": None, "y": None}
    _gather_to_host([("x", torch.tensor(1.5)), ("y", torch.tensor(-2.0))], same)
    assert same == {"x": 1.5, "y": -2.0}


def test_interrupt_raised_mid_fan_out_waits_for_every_sink(journal):
    """raise_interrupt() inside a fan-out is held until the last sink has the row."""
    from rl_training.experiment.logging import raise_interrupt

    class Interrupting(Recorder):
        def log_metrics(self, metrics, step):
            super().log_metrics(metrics, step)
            if step == 7:
                raise_interrupt(KeyboardInterrupt())  # as a signal handler would, mid-call

    logger = CompositeLogger({"a": Interrupting("a", journal), "b": Recorder("b", journal)})
    with pytest.raises(KeyboardInterrupt):
        logger.log_metrics({"m": 1.0}, 7)
    assert [entry[0] for entry in journal] == ["a", "b"]
    logger.log_metrics({"m": 2.0}, 8)  # nothing left pending
    assert [entry[3] for entry in journal] == [7, 7, 8, 8]
    with pytest.raises(KeyboardInterrupt):
        raise_interrupt(KeyboardInterrupt())  # outside a fan-out: raised at once
