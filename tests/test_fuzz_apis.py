"""An adversarial user of the sweep, experiment, data and schedule APIs (issue "Nothing
silent"): for each input, either the right result or a clear error at the boundary that
names the problem; never a silently wrong result, never a cryptic internal error.

Also: the checkpoint package's shape (public API, no private names across its files),
``load_metadata`` verifying the whole file, and ``evaluate``'s domain check covering
every example. Everything here is cheap: no sweep or run is trained.
"""

import ast
import dataclasses
import gzip
import json
import math
import os
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funcnn import checkpoint, data, experiment, losses, nn, optim, sweep, train
from funcnn.data import mnist as mnist_lib

X, Y = data.spiral_data(10, 3)
MODEL = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))
SCE = losses.softmax_cross_entropy
FEW = settings(max_examples=25, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
# What a clear error is: a funcnn or standard type, never an internal slip.
CLEAR = (ValueError, TypeError, OSError, IndexError)
CRYPTIC = (KeyError, AttributeError, ZeroDivisionError, UnboundLocalError, NameError)


def raises(fn, error, match):
    with pytest.raises(error, match=match) as e:
        fn()
    return e.value


# =========================================================================== schedules

SCHEDULE_CASES = [
    # (call, error, message)
    (lambda: optim.piecewise_constant_schedule(0.1, [(100, 0.5)]), TypeError,
     r"piecewise_constant_schedule: boundaries_and_scales must be a dict"),
    (lambda: optim.piecewise_constant_schedule(0.1, {"100": 0.5}), TypeError,
     r"maps step numbers to scales.*'100'"),
    (lambda: optim.piecewise_constant_schedule(0.1, {100: "half"}), TypeError,
     r"maps step numbers to scales"),
    (lambda: optim.piecewise_constant_schedule(0.1, {100: -0.5}), ValueError,
     r"scales must be >= 0"),
    (lambda: optim.piecewise_constant_schedule(0.1, {100: float("nan")}), ValueError,
     r"scales must be finite"),
    (lambda: optim.join_schedules(optim.constant_schedule(0.1), [10]), TypeError,
     r"join_schedules: schedules must be a list"),
    (lambda: optim.join_schedules([optim.constant_schedule(0.1)] * 2, 10), TypeError,
     r"boundaries must be a list of step numbers"),
    (lambda: optim.join_schedules([optim.constant_schedule(0.1)] * 3, [20, 10]),
     ValueError, r"boundaries must be in increasing order"),
    (lambda: optim.join_schedules([optim.constant_schedule(0.1)] * 2, ["10"]), TypeError,
     r"boundaries must be step numbers"),
    (lambda: optim.join_schedules([optim.constant_schedule(0.1)] * 2, []), ValueError,
     r"len\(boundaries\) == len\(schedules\) - 1"),
    (lambda: optim.join_schedules([0.1, 0.2], [5]), TypeError, r"expected a schedule"),
    (lambda: optim.sgd(optim.linear_schedule), TypeError,
     r"got the function linear_schedule itself; call it"),
    (lambda: optim.adam(lambda: 0.1), TypeError,
     r"a schedule function takes the step count.*raised TypeError"),
    (lambda: optim.join_schedules([optim.constant_schedule(0.1), lambda t: t["lr"]], [5]),
     TypeError, r"join_schedules: a schedule function takes the step count"),
    (lambda: optim.cosine_decay_schedule(0.1, 100, exponent=-1.0), ValueError,
     r"exponent must be finite and >= 0"),
    (lambda: optim.cosine_decay_schedule(0.1, 0), ValueError, r"decay_steps must be .*> 0"),
    (lambda: optim.cosine_decay_schedule(0.1, 100, alpha=1.5), ValueError,
     r"alpha must be finite and in \[0, 1\]"),
    (lambda: optim.warmup_cosine_decay_schedule(0.0, 0.1, -5, 100), ValueError,
     r"warmup_steps must be finite and >= 0"),
    (lambda: optim.warmup_cosine_decay_schedule(0.0, 0.1, 100, 50), ValueError,
     r"decay_steps \(the total, warmup included\) must exceed warmup_steps"),
    (lambda: optim.warmup_cosine_decay_schedule(0.0, 0.1, 10, 100, exponent=-2.0),
     ValueError, r"exponent must be finite and >= 0"),
    (lambda: optim.polynomial_schedule(0.1, 0.0, -1.0, 100), ValueError,
     r"polynomial_schedule: power must be finite and >= 0"),
    (lambda: optim.linear_schedule(0.1, float("nan"), 100), ValueError,
     r"end_value must be finite"),
    (lambda: optim.linear_schedule("0.1", 0.0, 100), TypeError,
     r"init_value must be a number"),
    (lambda: optim.linear_schedule(0.1, 0.0, 1e400), ValueError,
     r"transition_steps must be finite"),
    (lambda: optim.exponential_decay(0.1, 100, 1.5), ValueError,
     r"decay_rate=1.5 > 1 makes the value grow"),
    (lambda: optim.exponential_decay(0.1, 100, -0.5), ValueError,
     r"decay_rate must be finite and >= 0"),
    (lambda: optim.exponential_decay(0.1, 100, 0.5, staircase="no"), TypeError,
     r"staircase must be True or False"),
    (lambda: optim.inverse_time_decay(0.1, -1e-3), ValueError, r"decay must be finite"),
    (lambda: optim.inverse_time_decay(-0.1, 1e-3), ValueError,
     r"learning_rate must be finite and >= 0"),
    (lambda: optim.constant_schedule(float("inf")), ValueError, r"value must be finite"),
    (lambda: optim.constant_schedule(True), TypeError, r"value must be a number"),
    (lambda: optim.constant_schedule(0.1)("3"), TypeError,
     r"a schedule takes the step count"),
    (lambda: optim.linear_schedule(0.1, 0.0, 10)(jax.random.key(0)), TypeError,
     r"a schedule takes the step count"),
    (lambda: optim.constant_schedule(0.1)(None), TypeError, r"a schedule takes the step count"),
    (lambda: optim.sgd(lambda t: jnp.nan * t), ValueError,
     r"scale_by_learning_rate: the schedule function <lambda> gives nan at step 0"),
    (lambda: optim.linear_schedule(0.1, 0.0, transition_step=10), TypeError,
     r"transition_step"),  # a wrong keyword: Python's own error names it
]


@pytest.mark.parametrize("call, error, match", SCHEDULE_CASES)
def test_bad_schedule_arguments_are_named(call, error, match):
    raises(call, error, match)


def test_schedules_that_should_work_do():
    pw = optim.piecewise_constant_schedule(1.0, {10: 0.5, np.int64(20): np.float32(0.5)})
    assert [float(pw(s)) for s in (0, 10, 25)] == [1.0, 0.5, 0.25]
    joined = optim.join_schedules([optim.constant_schedule(1.0), lambda t: 2.0 + 0 * t,
                                   optim.constant_schedule(3.0)], np.array([5, 5]))
    assert [float(joined(s)) for s in (0, 5, 9)] == [1.0, 3.0, 3.0]
    # exponent 0 and power 0 are constant; huge but finite steps are fine
    assert float(optim.cosine_decay_schedule(0.5, 10, exponent=0.0)(10)) == 0.5
    assert float(optim.polynomial_schedule(0.5, 0.1, 0.0, 10)(10)) == 0.5
    assert float(optim.linear_schedule(0.5, 0.1, 10)(10**9)) == pytest.approx(0.1)
    # an optimizer takes a schedule: after it has run out, the step is zero
    opt = optim.sgd(optim.linear_schedule(0.1, 0.0, 2))
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update({"w": jnp.ones(2)}, state, params)
    assert np.array_equal(updates["w"], np.zeros(2))


@FEW
@given(init=st.floats(allow_nan=True, allow_infinity=True, width=32),
       end=st.floats(-1e3, 1e3), steps=st.integers(-5, 10**6),
       power=st.floats(-3, 3))
def test_polynomial_schedule_is_bounded_or_refused(init, end, steps, power):
    try:
        s = optim.polynomial_schedule(init, end, power, steps)
    except (ValueError, TypeError) as e:
        assert "polynomial_schedule" in str(e)
        assert not math.isfinite(init) or power < 0
        return
    vals = np.asarray([s(t) for t in (0, max(steps, 1) // 2, max(steps, 1), 2 * max(steps, 1))])
    assert np.all(np.isfinite(vals)), (init, end, steps, power, vals)
    lo, hi = min(init, end), max(init, end)
    tol = 1e-6 * max(1.0, abs(lo), abs(hi))
    assert np.all((vals >= lo - tol) & (vals <= hi + tol))


@FEW
@given(v0=st.floats(0, 10), decay_steps=st.integers(-3, 10**5), alpha=st.floats(-0.5, 1.5),
       exponent=st.floats(-2, 4))
def test_cosine_schedule_is_bounded_or_refused(v0, decay_steps, alpha, exponent):
    try:
        s = optim.cosine_decay_schedule(v0, decay_steps, alpha, exponent)
    except ValueError as e:
        assert "cosine_decay_schedule" in str(e)
        assert decay_steps <= 0 or not 0 <= alpha <= 1 or exponent < 0
        return
    vals = np.asarray([s(t) for t in (0, decay_steps // 2, decay_steps, 3 * decay_steps)])
    assert np.all(np.isfinite(vals)) and np.all(vals <= v0 * (1 + 1e-6))
    assert np.all(vals >= alpha * v0 * (1 - 1e-6) - 1e-12)


# ============================================================================== data

def test_batches_bad_arguments_are_named():
    x, y = np.zeros((10, 2)), np.zeros(10, int)
    cases = [
        (dict(batch_size=0), ValueError, r"batch_size must be an int in \[1, 10\]"),
        (dict(batch_size=11), ValueError, r"batch_size must be an int in \[1, 10\]"),
        (dict(batch_size=2.5), ValueError, r"batch_size must be an int"),
        (dict(batch_size=True), ValueError, r"batch_size must be an int"),
        (dict(batch_size=2, seed=-1), ValueError, r"seed must be an int >= 0"),
        (dict(batch_size=2, seed="7"), ValueError, r"seed must be an int >= 0"),
        (dict(batch_size=2, seed=1.5), ValueError, r"seed must be an int >= 0"),
        (dict(batch_size=2, key=0), TypeError, r"key must be a jax.random.key"),
        (dict(batch_size=2, key=jnp.ones(3)), TypeError,
         r"key must be a jax.random.key, got an array of dtype float"),
        (dict(batch_size=2, key=jax.random.split(jax.random.key(0), 2)), TypeError,
         r"key must be a jax.random.key"),
        (dict(batch_size=2, key=jax.random.key(0), seed=1), ValueError, r"either key= or seed="),
        (dict(batch_size=2, drop_remainder="yes"), TypeError,
         r"drop_remainder must be True or False"),
    ]
    for kwargs, error, match in cases:
        raises(lambda: data.batches(x, y, **kwargs), error, match)
    for bad_x, bad_y, match in [
        (np.zeros((0, 2)), np.zeros(0), r"empty \(0 examples\)"),
        (np.zeros((10, 2)), np.zeros(9), r"same number of examples.*len\(x\)=10.*len\(y\)=9"),
        (np.full((10, 2), np.nan), np.zeros(10), r"x holds 20 non-finite"),
        (np.zeros((10, 2), complex), np.zeros(10), r"x is complex"),
        (np.array([["a", "b"]] * 10), np.zeros(10), r"x must be a numeric array"),
        (np.float64(3.0), np.zeros(10), r"x must be an array whose first axis"),
        ([[1.0, 2.0], [1.0]], [0, 1], r"x must be a numeric array with one row per example, "
                                      r"all rows of one shape"),
    ]:
        raises(lambda: data.batches(bad_x, bad_y, 2), ValueError, match)


def test_batches_accept_both_kinds_of_key():
    x, y = np.arange(10.0)[:, None], np.arange(10)
    a = [yb for _, yb in data.batches(x, y, 3, key=jax.random.key(1))]
    b = [yb for _, yb in data.batches(x, y, 3, key=jax.random.PRNGKey(1))]
    assert sorted(np.concatenate(a).tolist()) == list(range(10))
    assert sorted(np.concatenate(b).tolist()) == list(range(10))


@FEW
@given(n=st.integers(1, 40), batch_size=st.integers(-3, 45), seed=st.integers(-2, 2**33),
       drop=st.booleans())
def test_batches_cover_the_data_exactly_or_refuse(n, batch_size, seed, drop):
    x, y = np.arange(n, dtype=np.float32)[:, None], np.arange(n)
    try:
        got = list(data.batches(x, y, batch_size, seed=seed, drop_remainder=drop))
    except ValueError as e:
        assert ("batch_size" in str(e) and not 1 <= batch_size <= n) or \
            ("seed" in str(e) and seed < 0)
        return
    seen = np.concatenate([yb for _, yb in got])
    assert all(np.array_equal(xb[:, 0], yb) for xb, yb in got)
    assert len(seen) == (n - n % batch_size if drop else n) and len(set(seen.tolist())) == len(seen)
    assert len(got) == data.batches_per_epoch(n, batch_size, drop_remainder=drop)


@pytest.mark.parametrize("call, error, match", [
    (lambda: data.spiral_data(100, 3, seed=-1), ValueError,
     r"seed must be an int in \[0, 2\*\*32\)"),
    (lambda: data.spiral_data(100, 3, seed="a"), ValueError, r"seed must be an int"),
    (lambda: data.vertical_data(10, 2, seed=2**32), ValueError, r"seed must be an int"),
    (lambda: data.vertical_data(10, 2, seed=1.0), ValueError, r"seed must be an int"),
    (lambda: data.spiral_data(0, 3), ValueError, r"samples must be a positive int"),
    (lambda: data.spiral_data(10.0, 3), ValueError, r"samples must be a positive int"),
    (lambda: data.spiral_data(10, True), ValueError, r"classes must be a positive int"),
    (lambda: data.spiral_data(10, 257), ValueError, r"classes must be at most 256"),
    (lambda: data.spiral_data(10, 3, rng=np.random.default_rng(0)), TypeError,
     r"rng must be a np.random.RandomState"),
    (lambda: data.sine_data(-5), ValueError, r"samples must be a positive int"),
    (lambda: data.spiral_data(10, 3, seeds=1), TypeError, r"seeds"),
])
def test_generated_data_bad_arguments(call, error, match):
    raises(call, error, match)


def _idx(shape=(3, 2), code=0x08, payload=None):
    head = struct.pack(f">BBBB{len(shape)}i", 0, 0, code, len(shape), *shape)
    if payload is None:
        payload = bytes(max(0, math.prod(shape)))
    return head + payload


@pytest.mark.parametrize("blob, match", [
    (b"", r"only 0 bytes"),
    (b"\x00\x00", r"only 2 bytes"),
    (b"<!DOCTYPE html><html>", r"bad magic"),
    (_idx(code=0x07), r"unknown dtype code 0x07"),
    (_idx()[:-1], r"truncated: the header announces shape \(3, 2\), 6 bytes"),
    (_idx() + b"\x00", r"extra bytes after the 6 bytes"),
    (_idx()[:8], r"header ends early"),
    (_idx(shape=(-1, 2)), r"negative dimension size"),
    (_idx(shape=(2**31 - 1,) * 4, payload=b""), r"the header claims shape|truncated"),
    (gzip.compress(_idx(), mtime=0)[:-6], r"broken gzip stream"),  # mtime: a stable test id
    (b"\x1f\x8b" + b"garbage" * 3, r"broken gzip stream"),
])
def test_read_idx_damaged_bytes_name_the_file(blob, match):
    e = raises(lambda: data.read_idx(blob, name="t10k-labels"), ValueError, match)
    assert "t10k-labels" in str(e) and "download it again" in str(e)


def test_read_idx_and_write_idx_wrong_types(tmp_path):
    raises(lambda: data.read_idx(123), TypeError, r"read_idx expects a path or bytes, got int")
    raises(lambda: data.read_idx(_idx().decode("latin-1")), TypeError,
           r"is not a path .*pass a file's contents as bytes")
    raises(lambda: data.write_idx(tmp_path / "no" / "a.idx", np.zeros(3, np.uint8)),
           FileNotFoundError, r"write_idx: the folder .*no does not exist")
    raises(lambda: data.read_idx(tmp_path / "missing.gz"), FileNotFoundError, "missing.gz")
    for bad in (np.zeros(3, bool), np.zeros(3, np.int64), np.zeros(3, complex)):
        raises(lambda: data.write_idx(tmp_path / "a.idx", bad), ValueError,
               r"IDX stores uint8, int8, int16, int32, float32 or float64")
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert np.array_equal(data.read_idx(data.write_idx(tmp_path / "a.idx.gz", arr)), arr)


@FEW
@given(blob=st.binary(max_size=64))
def test_read_idx_random_bytes_give_an_array_or_a_value_error(blob):
    try:
        arr = data.read_idx(blob)
    except ValueError as e:
        assert "<bytes>" in str(e)
        return
    assert isinstance(arr, np.ndarray)


def _fake_spec():
    files = [mnist_lib.IdxFile(n, s) for n, s in (("train-images-idx3-ubyte", (2, 2, 2)),
                                                 ("train-labels-idx1-ubyte", (2,)),
                                                 ("t10k-images-idx3-ubyte", (1, 2, 2)),
                                                 ("t10k-labels-idx1-ubyte", (1,)))]
    return data.DatasetSpec("fake", ("http://127.0.0.1:9/",), *files)


def test_loaders_name_missing_wrong_and_damaged_folders(tmp_path):
    spec = _fake_spec()
    raises(lambda: data.load_mnist(data_dir=123), TypeError, r"data_dir must be a folder path")
    raises(lambda: data.load_mnist(cache_dir=1.5, download=False), TypeError,
           r"cache_dir must be a folder path")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    raises(lambda: data.load_fashion_mnist(data_dir=a_file), NotADirectoryError,
           r"data_dir .*file is a file, not a folder")
    e = raises(lambda: data.load_mnist(data_dir=tmp_path / "none"), FileNotFoundError,
               r"4 file\(s\) missing from")
    assert "train-images-idx3-ubyte.gz" in str(e) and "never downloads" in str(e)
    raises(lambda: data.load_mnist(data_dir=tmp_path, scale="Unit"), ValueError,
           r"scale must be None")
    raises(lambda: data.load_mnist(data_dir=tmp_path, flatten="yes"), TypeError,
           r"flatten must be True or False")
    # a fake data set: good files load; a truncated one names itself
    folder = tmp_path / "fake"
    folder.mkdir()
    for f in spec.files:
        data.write_idx(folder / (f.name + ".gz"), np.ones(f.shape, np.uint8))
    (x, _), _ = data.load_idx_dataset(spec, folder, scale="unit", flatten=True)
    assert x.shape == (2, 4) and x.dtype == np.float32
    assert x.max() == np.float32(1) / np.float32(255)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-3])
    raises(lambda: data.load_idx_dataset(spec, folder), ValueError,
           r"t10k-labels-idx1-ubyte.gz.*(broken gzip|truncated)")
    data.write_idx(bad, np.ones((3,), np.uint8))  # the wrong shape: another data set
    raises(lambda: data.load_idx_dataset(spec, folder), mnist_lib.ChecksumError,
           r"expected uint8 data of shape \(1,\), got uint8 of shape \(3,\)")


def test_prepare_images_refuses_to_scale_twice():
    img = np.full((2, 2, 2), 255, np.uint8)
    assert data.prepare_images(img.tolist(), flatten=True).shape == (2, 4)  # a list works
    once = data.prepare_images(img, scale="unit")
    raises(lambda: data.prepare_images(once, scale="unit"), ValueError,
           r"float32 \(already scaled\?\)")
    raises(lambda: data.prepare_images(np.full((2, 2), 300), scale=True), ValueError,
           r"hold values in \[300, 300\]")
    raises(lambda: data.prepare_images(np.uint8(3), flatten=True), ValueError,
           r"images must be an array")
    assert np.array_equal(data.prepare_images(img, scale="symmetric"), np.ones((2, 2, 2)))
    assert data.prepare_images(np.zeros((0, 2, 2), np.uint8), flatten=True).shape == (0, 4)


# ============================================================================= sweep

@pytest.mark.parametrize("call, error, match", [
    (lambda: sweep.grid(), ValueError, r"sweep.grid: empty grid"),
    (lambda: sweep.grid(learning_rate=[]), ValueError, r"learning_rate has no values"),
    (lambda: sweep.grid(learning_rate=0.1), ValueError,
     r"got the single value 0.1. Fix: learning_rate=\[0.1\]"),
    (lambda: sweep.grid(learning_rate="0.1"), TypeError, r"must be a sequence of numbers"),
    (lambda: sweep.grid(learning_rate={"a": 1}), TypeError, r"must be a sequence of numbers"),
    (lambda: sweep.grid(learning_rate=["a", "b"]), TypeError, r"must hold numbers"),
    (lambda: sweep.grid(learning_rate=[[0.1], [0.1, 0.2]]), ValueError, r"of one shape"),
    (lambda: sweep.grid(learning_rate={0.1, 0.2}), TypeError, r"a list or an array, in order"),
    (lambda: sweep.grid(learning_rate=(v for v in [0.1])), TypeError, r"a list or an array"),
    (lambda: sweep.grid(learning_rate=[0.1 + 1j]), TypeError, r"must hold numbers"),
    (lambda: sweep.random(jax.random.key(0), 2, b1=sweep.uniform), TypeError,
     r"b1=sweep.uniform is the function itself; call it"),
    (lambda: sweep.zipped(a=[1, 2], b=[1, 2, 3]), ValueError,
     r"one value per configuration; got lengths"),
    (lambda: sweep.zipped(), ValueError, r"no names given"),
    (lambda: sweep.configs({"learning_rate": [0.1, 0.2]}), TypeError,
     r"got one dict.*sweep.zipped"),
    (lambda: sweep.configs([0.1, 0.2]), TypeError, r"configuration 0 is 0.1"),
    (lambda: sweep.configs(5), TypeError, r"expected a list of configuration dicts; got int"),
    (lambda: sweep.configs([]), ValueError, r"empty list"),
    (lambda: sweep.configs([{"a": 1}, {"b": 2}]), ValueError,
     r"every configuration needs the names \['a'\]; configuration 1"),
    (lambda: sweep.uniform(1, 0), ValueError, r"need low < high"),
    (lambda: sweep.uniform(0, float("inf")), ValueError, r"high must be finite"),
    (lambda: sweep.uniform(float("nan"), 1), ValueError, r"low must be finite"),
    (lambda: sweep.uniform("0", "1"), TypeError, r"low must be a number"),
    (lambda: sweep.log_uniform(0, 1), ValueError, r"need 0 < low < high"),
    (lambda: sweep.log_uniform(1e-3, float("inf")), ValueError, r"high must be finite"),
    (lambda: sweep.randint(0.5, 3.7), TypeError, r"low must be an int"),
    (lambda: sweep.randint(0, 2**70), ValueError, r"must lie in .*jax's int"),
    (lambda: sweep.randint(3, 3), ValueError, r"need low < high"),
    (lambda: sweep.choice([]), ValueError, r"values has no values"),
    (lambda: sweep.choice(["adam", "sgd"]), TypeError, r"must hold numbers"),
    (lambda: sweep.random(jax.random.key(0), 0, lr=[0.1]), ValueError, r"n must be a positive int"),
    (lambda: sweep.random(jax.random.key(0), True, lr=[0.1]), ValueError,
     r"n must be a positive int"),
    (lambda: sweep.random(0, 3, lr=[0.1]), TypeError, r"key must be one jax.random.key"),
    (lambda: sweep.random(jax.random.key(0), 3), ValueError, r"no names given"),
    (lambda: sweep.grid(a=[1]) * sweep.grid(a=[2]), ValueError, r"both sweep \['a'\]"),
    (lambda: sweep.grid(a=[1]) + sweep.grid(b=[2]), ValueError, r"same names"),
    (lambda: sweep.grid(a=[1]) * 3, TypeError, r"unsupported operand"),
])
def test_bad_spaces_are_named(call, error, match):
    raises(call, error, match)


def test_spaces_that_should_work_do():
    s = sweep.random(jax.random.key(0), 5, learning_rate=[0.1, 0.2],
                     seed=sweep.randint(0, 10), b1=sweep.uniform(0.8, 0.9))
    assert len(s) == 5 and set(s.columns["learning_rate"].tolist()) <= {0.1, 0.2}
    assert np.all((s.columns["seed"] >= 0) & (s.columns["seed"] < 10))
    assert len(sweep.configs(({"a": 1}, {"a": 2}))) == 2
    assert len(sweep.grid(a=[1, 2]) * sweep.zipped(b=[1, 2, 3])) == 6


@FEW
@given(a=st.lists(st.floats(allow_nan=False, width=32), max_size=4),
       b=st.lists(st.integers(-5, 5), max_size=4))
def test_grid_has_every_combination_or_refuses(a, b):
    try:
        space = sweep.grid(a=a, b=b)
    except ValueError as e:
        assert "has no values" in str(e) and (not a or not b)
        return
    assert len(space) == len(a) * len(b)
    assert [(r["a"], r["b"]) for r in space.rows()] == [
        (u, v) for u in np.asarray(a).tolist() for v in b]


GRID = sweep.grid(learning_rate=[0.1, 0.2])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(space={"learning_rate": [0.1]}), TypeError, r"space must be a sweep.Space"),
    (dict(optimizer="adam"), TypeError, r"optimizer must be a funcnn.optim.Optimizer"),
    (dict(epochs=0), ValueError, r"epochs must be a positive int"),
    (dict(epochs=1.5), ValueError, r"epochs must be a positive int"),
    (dict(input_shape=(2.5,)), TypeError, r"input_shape must be a tuple of positive ints"),
    (dict(input_shape="2"), TypeError, r"input_shape must be a tuple of positive ints"),
    (dict(input_shape=2), TypeError, r"input_shape must be a tuple of positive ints"),
    (dict(input_shape=(0,)), TypeError, r"input_shape must be a tuple of positive ints"),
    (dict(validation_data=X), TypeError, r"validation_data must be a pair \(x_val, y_val\)"),
    (dict(shuffle="no"), TypeError, r"shuffle must be True or False"),
    (dict(keep_params=None), TypeError, r"keep_params must be True or False"),
    (dict(strategy="VMAP"), ValueError, r"strategy must be one of"),
    (dict(dtype=jnp.int32), TypeError, r"dtype is the weights' dtype and must be a float dtype"),
    (dict(dtype="float17"), TypeError, r"dtype must be a float dtype"),
    (dict(chunk_size=0, strategy="chunked"), ValueError, r"chunk_size must be an int >= 1"),
    (dict(devices="cpu"), TypeError, r"devices must be a number of devices or a list"),
    (dict(devices=[0, 1]), TypeError, r"devices must be a non-empty list of jax devices"),
    (dict(devices=0), ValueError, r"devices must be in \[1, "),
    (dict(space=sweep.grid(learnin_rate=[0.1])), ValueError,
     r"unknown name 'learnin_rate' in the space. Did you mean 'learning_rate'\?"),
    (dict(space=sweep.grid(learning_rate=[0.1, -1.0])), ValueError,
     r"learning_rate=-1.0 is not a valid value"),
    (dict(space=sweep.grid(seed=[0.5])), ValueError, r"seed values must be integers"),
    (dict(space=sweep.grid(l2=[-1.0])), ValueError, r"l2 \(a penalty strength\) must be"),
    (dict(batch_size=0), ValueError, r"batch_size must be an int in \[1, 30\]"),
    (dict(penalty=train.Penalty(l2=-1.0)), ValueError, r"sweep.run: penalty.l2 must be finite "
                                                         r"and >= 0"),
    (dict(penalty="l2"), TypeError, r"penalty must be None, a train.Penalty or a function"),
    (dict(learning_rate=0.1), TypeError, r"learning_rate"),  # a wrong keyword
])
def test_bad_sweep_run_arguments_fail_before_training(kwargs, error, match):
    args = dict(model=MODEL, loss=SCE, optimizer=optim.sgd(0.1), x=X, y=Y, space=GRID,
                epochs=1)
    args.update(kwargs)
    raises(lambda: sweep.run(**args), error, match)


def _results(grid_values=(0.1, 0.2), b1=(0.9, 0.8)):
    space = sweep.grid(learning_rate=list(grid_values), b1=list(b1))
    c = len(space)
    hist = {"loss": np.linspace(1, 0, 2 * c).reshape(c, 2),
            "accuracy": np.linspace(0, 1, 2 * c).reshape(c, 2)}
    values = {**{k: v for k, v in space.columns.items()}, "seed": np.zeros(c, np.int32)}
    return sweep.SweepResults(values=values, history=hist, diverged=np.zeros(c, bool),
                              diverged_epoch=np.zeros(c, int),
                              params={"w": jnp.arange(c * 2.0).reshape(c, 2)},
                              names=space.names, grid_axes=space.grid_axes,
                              strategy="loop", chunk_size=None, devices=1, compile_s=0.0,
                              run_s=0.0)


def test_results_refuse_indices_they_do_not_have(tmp_path):
    res = _results()
    assert res.config(-1) == res.config(3)
    assert np.array_equal(res.params_of(-1)["w"], [6.0, 7.0])
    # a jax array would clamp index 4 to 3 and return the last configuration's weights
    raises(lambda: res.params_of(4), IndexError, r"params_of: configuration 4 does not exist; "
                                                  r"this sweep has 4")
    raises(lambda: res.config(10), IndexError, r"config: configuration 10 does not exist")
    raises(lambda: res.config(1.0), TypeError, r"index must be an int")
    raises(lambda: res.summary(top=-1), ValueError, r"top must be a positive int")
    raises(lambda: res.summary(top=0), ValueError, r"top must be a positive int")
    raises(lambda: res.best("accurcy"), ValueError, r"unknown metric 'accurcy'")
    raises(lambda: res.ranking("loss", mode="maximum"), ValueError, r"mode must be 'min' or 'max'")
    raises(lambda: res.final(), TypeError, r"results.final\['loss'\], not results.final\(\)")
    raises(lambda: res.to_csv(tmp_path / "no" / "r.csv"), FileNotFoundError, "r.csv")
    assert res.best("accuracy")["index"] == 3


def test_heatmap_refuses_axes_whose_cells_collide():
    pytest.importorskip("matplotlib")
    raises(lambda: _results(grid_values=(0.1, 0.1)).plot_heatmap("loss"), ValueError,
           r"grid axis learning_rate holds repeated or NaN values")
    raises(lambda: _results().plot_heatmap("loss", x="b1", y="b1"), ValueError,
           r"x and y must be the grid's axes")
    raises(lambda: _results().plot_curves("loss", by="momentum"), ValueError,
           r"by='momentum' is not swept")
    _results(grid_values=(1e-300, 1e300)).plot_curves("loss", by="learning_rate")


# ======================================================================== experiment

@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float = 0.1
    epochs: int = 1


def _record(r: experiment.Run):
    r.log_metrics(1, {"loss": 0.5})
    r.log_result(done=1)
    return r.dir


def _execute(tmp_path, **kw):
    return experiment.execute("fuzz", Cfg(**kw), _record, runs_dir=tmp_path, plots=False,
                              verbose=False)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(name="bad/name"), ValueError, r"experiment name must be letters"),
    (dict(config=Cfg), TypeError, r"config must be a dataclass instance"),
    (dict(seed="0"), TypeError, r"seed must be an int"),
    (dict(seed=2**70), ValueError, r"seed must fit in 64 bits"),
    (dict(checkpoint_every=0), ValueError, r"checkpoint_every must be a positive int"),
    (dict(keep=1.5), ValueError, r"keep must be a positive int"),
    (dict(runs_dir=None), TypeError, r"runs_dir must be a folder path"),
    (dict(run_fn=None), TypeError, r"run_fn must be a function"),
    (dict(config=Cfg(lr=float("nan"))), ValueError, r"config field lr: config value nan is "
                                                    r"not a finite number"),
])
def test_execute_bad_arguments(tmp_path, kwargs, error, match):
    args = dict(name="fuzz", config=Cfg(), run_fn=_record, runs_dir=tmp_path, verbose=False)
    args.update(kwargs)
    raises(lambda: experiment.execute(**args), error, match)


def test_main_bad_command_lines(tmp_path, capsys):
    main = lambda argv: experiment.main("fuzz", Cfg, _record, argv + ["--runs-dir",  # noqa: E731
                                                                      str(tmp_path)])
    raises(lambda: experiment.main("fuzz", Cfg, _record, "--lr 0.1"), TypeError,
           r"argv must be a list of strings")
    raises(lambda: experiment.main("fuzz", Cfg, _record, ["--lr", 0.1]), TypeError,
           r"argv must be a list of strings")
    for argv, says in ((["--lr", "nan"], "expected a finite number"),
                       (["--lr", "inf"], "expected a finite number"),
                       (["--lr", "fast"], "invalid float value"),
                       (["--epochs", "1.5"], "invalid int value"),
                       (["--learning-rate", "0.1"], "unrecognized arguments"),
                       (["--check-repro", "--repro-rtol", "-1"], "--repro-rtol must be a finite")):
        with pytest.raises(SystemExit):
            main(argv)
        assert says in capsys.readouterr().err
    assert main(["--lr", "0.5"]).is_dir()


def test_damaged_config_and_manifest_are_set_aside_and_the_run_goes_on(tmp_path, capsys):
    folder = _execute(tmp_path)
    (folder / "config.json").write_text("[1, 2]")
    (folder / "manifest.json").write_text('{"attempts": 5, "status": "complet')
    assert _execute(tmp_path) == folder
    err = capsys.readouterr().err
    assert "config.json is damaged (not a JSON object)" in err and "manifest.json is damaged" in err
    assert (folder / "config.json.damaged").read_text() == "[1, 2]"
    assert json.loads((folder / "config.json").read_text())["config"] == {"lr": 0.1, "epochs": 1}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["attempts"] == []
    # a manifest whose attempts are not a list: the new attempts list starts over
    (folder / "manifest.json").write_text(json.dumps({"attempts": {"x": 1}, "status": "failed"}))
    _execute(tmp_path)
    assert [a["status"] for a in json.loads((folder / "manifest.json").read_text())["attempts"]] \
        == ["failed"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_read_only_run_folder_is_named(tmp_path):
    folder = _execute(tmp_path)
    folder.chmod(0o500)
    try:
        raises(lambda: _execute(tmp_path), experiment.RunFolderError,
               rf"cannot write a probe file to the run folder {folder}")
    finally:
        folder.chmod(0o700)


def test_metrics_file_damage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"epoch": e, "loss": 1.0 / e}) for e in (1, 2, 3)]
    path.write_text("\n".join(rows) + '\n{"epoch": 4, "lo')  # torn last line: skipped
    assert [r["epoch"] for r in experiment.read_metrics(path)] == [1, 2, 3]
    for damage in ('{"epoch": 2, "lo', '{"epoch": "2"}', "[2]", "", "\x00\xff garbage"):
        path.write_text("\n".join([rows[0], damage, rows[2]]) + "\n")
        raises(lambda: experiment.read_metrics(path), experiment.ExperimentError,
               rf"{path}: line 2 of 3 is not a metrics row.*--restart")
    path.write_bytes(b"\xff\xfe\n")  # not UTF-8 at all, one line: a torn write
    assert experiment.read_metrics(path) == []


@FEW
@given(lines=st.lists(st.one_of(st.text(max_size=12), st.builds(
    lambda e: json.dumps({"epoch": e, "loss": 0.5}), st.integers(0, 9))), max_size=6))
def test_read_metrics_on_any_text(tmp_path, lines):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="replace")
    try:
        rows = experiment.read_metrics(path)
    except experiment.ExperimentError as e:
        assert "is not a metrics row" in str(e)
        return
    assert all(isinstance(r, dict) and isinstance(r["epoch"], int) for r in rows)


def test_run_logging_refuses_values_it_cannot_store(tmp_path):
    run = experiment.Run("fuzz", Cfg(), 0, tmp_path, verbose=False)
    raises(lambda: run.log_metrics(2.5, {"loss": 0.1}), TypeError,
           r"epoch must be an int >= 0; got 2.5")
    raises(lambda: run.log_metrics(1, 0.5), TypeError, r"expected a dict of metrics")
    raises(lambda: run.log_metrics(1, {"loss": [1, 2]}), TypeError,
           r"log_metrics: metric 'loss' must be a number")
    raises(lambda: run.log_metrics(1, {"loss": np.ones(3)}), TypeError, r"metric 'loss'")
    raises(lambda: run.log_metrics(1, {"epoch": 3}), ValueError, r"other than 'epoch'")
    run.log_metrics(1, {"loss": np.float32(0.5), "acc": jnp.asarray(float("nan")), "note": "x"})
    assert experiment.read_metrics(run.metrics_path) == [
        {"epoch": 1, "loss": 0.5, "acc": None, "note": "x"}]
    raises(lambda: run.log_result(model=object()), TypeError,
           r"log_result: result model=.* cannot be stored in results.json")
    run.log_result(curve=[1.0, float("nan")], table={"a": np.float64(np.inf)})
    assert json.loads((tmp_path / "results.json").read_text()) == {
        "curve": [1.0, None], "table": {"a": None}}
    (tmp_path / "results.json").write_text("[1]")
    raises(lambda: run.log_result(x=1), experiment.ExperimentError,
           r"results.json holds list, not a JSON object")
    raises(lambda: run.fit(MODEL, SCE, optim.sgd(0.1), None, X, Y, epochs=1,
                           validation_data=X), TypeError,
           r"Run.fit: validation_data must be a pair \(x_val, y_val\); got ndarray of length 30")
    raises(lambda: run.fit(MODEL, SCE, optim.sgd(0.1), None, X, Y, epochs=0), ValueError,
           r"epochs must be a positive int")
    for steps in ({"steps": 5}, {"epochs": 1, "steps": 5}, {"epochs": 1, "eval_every": 2}):
        raises(lambda: run.fit(MODEL, SCE, optim.sgd(0.1), None, X, Y, **steps), TypeError,
               r"Run.fit counts epochs: .* fix: epochs=ceil\(steps / steps_per_epoch\)")
    raises(lambda: run.fit(MODEL, SCE, optim.sgd(0.1), None, X, Y), ValueError,
           r"epochs must be a positive int; got None")
    for config in ({"lr": 0.1}, Cfg):
        raises(lambda: experiment.Run("fuzz", config, 0, tmp_path), TypeError,
               r"Run: config must be an instance of your config dataclass")


def test_resume_refuses_what_it_cannot_trust(tmp_path):
    run = experiment.Run("fuzz", Cfg(), 0, tmp_path, verbose=False)
    state = train.init_state(MODEL, optim.sgd(0.1), jax.random.key(0), (2,))
    run.save_checkpoint(2, state)
    run.log_metrics(1, {"loss": 1.0})
    run.log_metrics(2, {"loss": 0.5})
    run.log_metrics(3, {"loss": 0.4})  # after the checkpoint: cut away on resume
    back = run.resume_state(state)
    assert run.epoch == 2 and np.array_equal(back.params[0].w, state.params[0].w)
    assert [r["epoch"] for r in experiment.read_metrics(run.metrics_path)] == [1, 2]
    good = run.metrics_path.read_text()
    run.metrics_path.write_text("garbage\n" + good.splitlines()[1] + "\n")
    raises(lambda: run.resume_state(state), experiment.ExperimentError,
           r"line 1 of 2 is not a metrics row")
    run.metrics_path.write_text(good)
    experiment.Run("fuzz", Cfg(lr=0.2), 0, tmp_path).save_checkpoint(3, state)
    raises(lambda: run.resume_state(state), experiment.ExperimentError,
           r"ckpt_00000003.npz belongs to config hash")
    (tmp_path / "checkpoints" / "ckpt_00000003.npz").unlink()
    four = train.init_state(nn.serial(nn.dense(8), nn.relu(), nn.dense(4)), optim.sgd(0.1),
                            jax.random.key(0), (2,))
    raises(lambda: run.resume_state(four), experiment.ExperimentError,
           r"the state built by the script no longer matches it")
    assert (tmp_path / "checkpoints" / "ckpt_00000002.npz").is_file()  # intact: kept


def test_check_repro_of_a_damaged_record(tmp_path):
    folder = _execute(tmp_path)
    raises(lambda: experiment.check_repro(folder, Cfg, _record, rtol=-1e-3), ValueError,
           r"rtol must be a finite number >= 0")
    raises(lambda: experiment.config_hash("fuzz", Cfg(), "0"), TypeError, r"seed must be an int")
    raises(lambda: experiment.Run("fuzz", Cfg(), "0", tmp_path), TypeError, r"seed must be an int")
    cfg = folder / "config.json"
    record = json.loads(cfg.read_text())
    for damage, match in (
            ({k: v for k, v in record.items() if k != "seed"}, r"seed missing or of the wrong"),
            ({**record, "config": [1]}, r"config missing or of the wrong type"),
            ({**record, "checkpoint_every": "1"}, r"checkpoint_every is '1'"),
            ({**record, "config": {"lr": "x", "bogus": 1}}, r"fields \['bogus'\] that Cfg lacks"),
            ([], r"name, seed, config_hash, config missing")):
        cfg.write_text(json.dumps(damage))
        raises(lambda: experiment.check_repro(folder, Cfg, _record), experiment.ExperimentError,
               match)
    cfg.write_text("{not json")
    raises(lambda: experiment.check_repro(folder, Cfg, _record), experiment.ExperimentError,
           r"cannot read .*config.json")


# ======================================================================== checkpoints

def test_checkpoint_package_keeps_its_public_api():
    for name in ("save", "load", "load_metadata", "read", "save_step", "steps", "latest",
                 "CheckpointError", "NarrowingError", "CheckpointVersionError", "FORMAT",
                 "VERSION", "HEADER"):
        assert hasattr(checkpoint, name), name
    assert issubclass(checkpoint.NarrowingError, checkpoint.CheckpointError)
    assert issubclass(checkpoint.CheckpointVersionError, checkpoint.CheckpointError)
    assert issubclass(checkpoint.CheckpointError, ValueError)
    # no file of the package imports a private name of its sibling
    folder = Path(checkpoint.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (path.name, private)


def test_checkpoint_bad_arguments(tmp_path):
    tree = {"w": np.arange(3.0)}
    raises(lambda: checkpoint.save(123, tree), TypeError, r"path must be a str or os.PathLike")
    raises(lambda: checkpoint.save(tmp_path / "no" / "c.npz", tree), FileNotFoundError,
           r"checkpoint folder .*no does not exist")
    raises(lambda: checkpoint.save(tmp_path / "c.npz", {"w": "text"}), TypeError,
           r"leaf \['w'\] has type str")
    raises(lambda: checkpoint.save(tmp_path / "c.npz", tree, metadata=[1]), TypeError,
           r"metadata must be a dict")
    raises(lambda: checkpoint.save(tmp_path / "c.npz", tree, metadata={"a": object()}), TypeError,
           r"metadata must be JSON-serialisable")
    raises(lambda: checkpoint.load(tmp_path / "c.npz", tree), FileNotFoundError,
           r"checkpoint file .*c.npz does not exist")
    raises(lambda: checkpoint.load_metadata(tmp_path), FileNotFoundError, r"\(it is a folder\)")
    raises(lambda: checkpoint.load_metadata(None), TypeError, r"path must be a str")
    raises(lambda: checkpoint.save_step(tmp_path, 1.0, tree), TypeError, r"step must be an int")
    raises(lambda: checkpoint.save_step(tmp_path, -1, tree), ValueError, r"step must be >= 0")
    raises(lambda: checkpoint.save_step(tmp_path, 1, tree, keep=0), ValueError, r"keep must be")
    path = checkpoint.save(tmp_path / "c.npz", tree, metadata={"epoch": 3})
    raises(lambda: checkpoint.load(path, {"w": np.arange(4.0)}), checkpoint.CheckpointError,
           r"shape expected \(4,\), got \(3,\)")
    raises(lambda: checkpoint.load(path, {"v": np.arange(3.0)}), checkpoint.CheckpointError,
           r"tree structure does not match the template")


def test_load_metadata_never_reads_a_damaged_file(tmp_path):
    path = checkpoint.save(tmp_path / "c.npz", {"w": np.arange(4.0), "k": np.int32(7)},
                           metadata={"epoch": 3})
    good = path.read_bytes()
    assert checkpoint.load_metadata(path) == {"epoch": 3}
    for i in range(len(good)):  # every single-byte flip, the seal's digits included
        path.write_bytes(good[:i] + bytes([good[i] ^ 0x5A]) + good[i + 1:])
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.load_metadata(path)
    for n in (0, 1, 40, len(good) // 2, len(good) - 1):  # truncated copies
        path.write_bytes(good[:n])
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.load_metadata(path)


def test_load_metadata_checks_every_member_of_a_version_1_file(tmp_path):
    from tests.test_checkpoint import make_version_1

    path = make_version_1(checkpoint.save(tmp_path / "c.npz", {"w": np.arange(64.0)},
                                          metadata={"epoch": 3}))
    assert checkpoint.load_metadata(path) == {"epoch": 3}
    blob = bytearray(path.read_bytes())
    at = bytes(blob).index(np.arange(64.0)[40:41].tobytes())  # inside the leaf's data
    blob[at] ^= 1
    path.write_bytes(bytes(blob))
    raises(lambda: checkpoint.load_metadata(path), checkpoint.CheckpointError,
           r"damaged funcnn checkpoint: zip member .*w.*CRC mismatch")


# ============================================================ evaluate's domain check

@pytest.mark.parametrize("on_mesh", [False, True], ids=["one-device", "mesh"])
def test_evaluate_checks_the_domain_of_every_example_not_the_first_16(on_mesh):
    # binary cross-entropy on an identity model: the predictions are the inputs
    kw = {"mesh": jax.make_mesh((1,), ("data",))} if on_mesh else {}
    model = nn.dense(1)
    params = jax.tree.map(lambda a: jnp.ones_like(a) if a.ndim == 2 else jnp.zeros_like(a),
                          model.init(jax.random.key(0), (1,)))
    x = np.full((60, 1), 0.5)
    t = np.ones((60, 1))
    ok = train.evaluate(model, losses.binary_cross_entropy, params, x, t, **kw)
    assert ok["loss"] == pytest.approx(-np.log(0.5))
    x[41] = 3.0  # a logit among probabilities, far past the first 16
    raises(lambda: train.evaluate(model, losses.binary_cross_entropy, params, x, t, **kw),
           ValueError, r"evaluate: .*do not suit binary_cross_entropy: example 41: .*pred must "
                       r"lie in \[0, 1\]")
    x[41] = 0.5
    t[50] = 2.0  # a binary target outside [0, 1]
    raises(lambda: train.evaluate(model, losses.binary_cross_entropy, params, x, t, **kw),
           ValueError, r"example 50: .*target must lie in \[0, 1\]")


def test_fit_and_evaluate_check_every_target_row():
    model = nn.serial(nn.dense(3), nn.softmax())
    state = train.init_state(model, optim.sgd(0.1), jax.random.key(0), (2,))
    soft = np.eye(3)[Y.astype(int)]
    soft[29] *= 2  # the last row sums to 2: its loss would count double
    cce = losses.categorical_cross_entropy
    raises(lambda: train.evaluate(model, cce, state.params, X, soft), ValueError,
           r"example 29: .*row 0 sums to 2")
    raises(lambda: train.fit(model, cce, optim.sgd(0.1), state, X, soft, epochs=1,
                             progress=False), ValueError, r"fit: .*example 29")
    raises(lambda: train.fit(model, cce, optim.sgd(0.1), state, X, Y, epochs=1,
                             validation_data=(X, soft), progress=False), ValueError,
           r"fit \(validation_data\): .*example 29")
    # logits given to the cross-entropy on probabilities: named with the hint
    raises(lambda: train.evaluate(MODEL, cce, MODEL.init(jax.random.key(0), (2,)), X, Y),
           ValueError, r"These look like logits; use losses.softmax_cross_entropy")
