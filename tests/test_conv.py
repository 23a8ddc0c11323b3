"""Convolution, pooling and layer norm: hand rules against jax.grad and finite
differences over many geometries, ties in max-pooling, conv nets through fit and sweep
under both engines, and the errors a user meets with badly shaped images.

Cost: XLA compiles dominate, so each geometry is checked by one backprop.check call
(hand rule vs jax.vjp and vs finite differences, one compiled program) in eval mode only
(these layers ignore ``train``; both modes of each are checked in test_backprop), and
random conv nets compare hand and jax.grad gradients in one jitted program each rather
than training twice."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funcnn import backprop, losses, nn, optim, sweep, train

F64 = jnp.float64


def _close(a, b, rtol=1e-10):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        scale = max(float(np.max(np.abs(v))), 1e-300)
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * scale)


@functools.partial(jax.jit, static_argnums=0)
def _rule_and_vjp(layer, params, x, dy):
    """The hand rule and jax.vjp of apply for output gradient ``dy``, in one program."""
    _, tape = backprop.forward(layer, params, x, None, False)
    hand = backprop.backward(layer, params, tape, dy, None, False)
    _, vjp = jax.vjp(lambda p, xx: layer.apply(p, xx), params, x)
    return hand, vjp(dy)


def _check(layer, **kw):
    """backprop.check in eval mode; it must have compared finite differences too."""
    result = backprop.check(layer, train=False, **kw)
    assert result.vjp_error <= 1e-10 and result.fd_points > 0 and result.kinks_skipped == 0
    return result


# (input H, W, C), features, kernel, stride, padding
GEOMETRIES = [
    ((6, 6, 1), 2, 3, 1, "VALID"),
    ((7, 5, 3), 4, 3, 2, "VALID"),      # odd sizes, stride 2: the last row is skipped
    ((7, 6, 1), 2, (3, 2), (2, 1), "SAME"),
    ((5, 5, 3), 3, 3, 2, "SAME"),
    ((4, 6, 2), 3, 2, 1, ((1, 2), (0, 3))),   # explicit, asymmetric padding
    ((5, 4, 1), 2, 2, 3, 2),            # padding wider than the kernel - 1
    ((8, 8, 3), 2, 5, 1, "VALID"),
    ((3, 3, 2), 2, 3, 1, "VALID"),      # a 1x1 output
]


@pytest.mark.parametrize("shape,features,kernel,stride,padding", GEOMETRIES)
def test_conv_rule_equals_jax_grad(shape, features, kernel, stride, padding):
    """dW, db and dx against jax.vjp (1e-10) and finite differences on every element."""
    layer = nn.conv2d(features, kernel, stride, padding, bias_init="normal")
    _check(layer, input_shape=shape, batch_size=2, seed=3)


@pytest.mark.parametrize("shape,features,kernel,stride,padding", GEOMETRIES)
def test_weight_gradient_im2col_equals_convolution_form(shape, features, kernel, stride,
                                                        padding):
    """dW is computed by im2col for a one-channel input (unless the patches are large),
    else as a convolution; both forms agree."""
    from funcnn.nn import conv
    layer = nn.conv2d(features, kernel, stride, padding)
    x = jax.random.normal(jax.random.key(1), (3, *shape), F64)
    out_shape = layer.output_shape(shape)
    dy = jax.random.normal(jax.random.key(2), (3, *out_shape), F64)
    window, strides = conv.pair(kernel, "", ""), conv.pair(stride, "", "")
    pads = conv.conv_padding(padding, shape[:2], window, strides, "")
    a, b = jax.jit(lambda x, dy: (conv.conv_weight_grad(x, dy, window, strides, pads),
                                  conv._conv_weight_grad_by_conv(x, dy, window, strides,
                                                                 pads)))(x, dy)
    assert a.shape == window + (shape[2], features)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


POOLS = [(nn.max_pool, (6, 6, 2), 2, 2, "VALID"), (nn.max_pool, (7, 5, 1), 3, 2, "VALID"),
         (nn.max_pool, (5, 5, 3), 2, 1, "SAME"), (nn.max_pool, (5, 4, 1), (2, 3), (1, 2), 1),
         (nn.avg_pool, (6, 6, 2), 2, 2, "VALID"), (nn.avg_pool, (7, 5, 1), 3, 2, "SAME"),
         (nn.avg_pool, (4, 5, 3), (2, 1), 1, ((0, 1), (1, 0)))]


@pytest.mark.parametrize("pool,shape,window,stride,padding", POOLS)
def test_pool_rules_equal_jax_grad(pool, shape, window, stride, padding):
    """dx against jax.vjp (1e-10) and finite differences on every element."""
    _check(pool(window, stride, padding), input_shape=shape, batch_size=2, seed=4)


@pytest.mark.parametrize("window,stride", [(2, 2), (3, 1), (2, 1), ((3, 2), (2, 1))])
def test_max_pool_ties_go_to_the_first_maximum(window, stride):
    """Ties built on purpose (ReLU zeros, small integers): the whole gradient goes to the
    first maximal element in row-major order, exactly as jax.grad routes it."""
    k1, k2 = jax.random.split(jax.random.key(5))
    x = jax.random.randint(k1, (3, 7, 6, 2), -2, 2).astype(F64)   # many equal values
    x = x.at[0].set(0.0)                                          # whole windows tie
    layer = nn.max_pool(window, stride)
    y_shape = (3, *layer.output_shape(x.shape[1:]))
    dy = jax.random.normal(jax.random.key(6), y_shape, F64)
    (_, dx), (_, auto_dx) = _rule_and_vjp(layer, nn.NoParams(), x, dy)
    np.testing.assert_allclose(dx, auto_dx, rtol=1e-14, atol=1e-15)  # summation order only
    # In the all-zero example each window's gradient sits at its top-left element.
    dy = jnp.ones(y_shape, F64)
    (_, dx), (_, auto_dx) = _rule_and_vjp(layer, nn.NoParams(), x, dy)  # same program
    np.testing.assert_allclose(dx, auto_dx, rtol=1e-14, atol=1e-15)
    sh, sw = nn.conv.pair(stride, "", "")
    expect = np.zeros(x.shape[1:3])
    for i in range(y_shape[1]):
        for j in range(y_shape[2]):
            expect[i * sh, j * sw] += 1
    np.testing.assert_array_equal(dx[0, :, :, 0], expect)
    np.testing.assert_allclose(jnp.sum(dx), jnp.sum(dy))   # no gradient lost or doubled


@pytest.mark.parametrize("shape", [(5,), (4, 3), (3, 3, 4)])
def test_layer_norm_rule(shape):
    layer = nn.layer_norm()
    params = nn.LayerNorm(jax.random.normal(jax.random.key(0), shape[-1:], F64),
                          jax.random.normal(jax.random.key(1), shape[-1:], F64))
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(2), (3, *shape), F64)
    _check(layer, x=x, params=params)  # jax.vjp and finite differences, every element


def test_layer_norm_normalises():
    x = jax.random.normal(jax.random.key(0), (4, 6), F64) * 5 + 2
    y = nn.layer_norm().apply(nn.layer_norm().init(jax.random.key(0), (6,), F64), x)
    np.testing.assert_allclose(jnp.mean(y, -1), 0, atol=1e-12)
    np.testing.assert_allclose(jnp.var(y, -1), 1, rtol=1e-5)


def test_one_by_one_conv_equals_dense():
    conv = nn.conv2d(4, 1)
    cp = conv.init(jax.random.key(0), (3, 5, 2), F64)
    dense = nn.dense(4)
    dp = nn.Dense(cp.w[0, 0], cp.b)
    x = jax.random.normal(jax.random.key(1), (2, 3, 5, 2), F64)
    dy = jax.random.normal(jax.random.key(2), (2, 3, 5, 4), F64)

    @jax.jit  # one program, not one per op
    def both(cp, dp, x, dy):
        y_conv = conv.apply(cp, x)
        y_dense = dense.apply(dp, x.reshape(-1, 2)).reshape(y_conv.shape)
        dcp, dx_c = conv.backward_fn(cp, (x, y_conv), dy, None, False)
        ddp, dx_d = dense.backward_fn(dp, (x.reshape(-1, 2), None), dy.reshape(-1, 4), None,
                                      False)
        return y_conv, y_dense, dcp, dx_c, ddp, dx_d

    y_conv, y_dense, dcp, dx_c, ddp, dx_d = both(cp, dp, x, dy)
    np.testing.assert_allclose(y_conv, y_dense, rtol=1e-13)
    # ... and so are their gradients: the conv rule reduces to the dense one.
    np.testing.assert_allclose(dcp.w[0, 0], ddp.w, rtol=1e-13)
    np.testing.assert_allclose(dcp.b, ddp.b, rtol=1e-13)
    np.testing.assert_allclose(dx_c.reshape(-1, 2), dx_d, rtol=1e-13)


def test_conv_init_fans_count_the_kernel_taps():
    w = nn.conv2d(64, 5, init="he").init(jax.random.key(0), (28, 28, 20)).w
    np.testing.assert_allclose(np.std(w), np.sqrt(2 / (5 * 5 * 20)), rtol=0.05)
    w = nn.conv2d(8, 3, init="nielsen").init(jax.random.key(0), (9, 9, 4)).w
    assert w.shape == (3, 3, 4, 8)


# ---- conv nets through fit and sweep, both engines ------------------------------------

def _conv_net(features, kernel, stride, pool, act):
    acts = {"relu": nn.relu, "sigmoid": nn.sigmoid, "tanh": nn.tanh}
    layers = [nn.conv2d(features, kernel, stride, "SAME"), acts[act]()]
    if pool == "max":
        layers.append(nn.max_pool(2, 2))
    elif pool == "avg":
        layers.append(nn.avg_pool(2, 1))
    return nn.serial(*layers, nn.layer_norm(), nn.flatten(), nn.dense(3))


# Each example compiles one program holding both gradients (a quarter of what training
# under both engines compiles); fit runs a conv net under both engines in the next test.
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(features=st.integers(1, 4), kernel=st.integers(1, 3), stride=st.integers(1, 2),
       pool=st.sampled_from(["max", "avg", "none"]),
       act=st.sampled_from(["relu", "sigmoid", "tanh"]), channels=st.sampled_from([1, 3]),
       seed=st.integers(0, 2**16))
def test_random_conv_nets_hand_gradient_equals_jax_grad(features, kernel, stride, pool, act,
                                                        channels, seed):
    """Random conv nets (conv, activation, pooling, layer norm, dense) with the
    softmax cross-entropy: the hand engine's loss and gradients equal jax.grad's."""
    model = _conv_net(features, kernel, stride, pool, act)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(4, 6, 5, channels)))
    y = jnp.asarray(rng.integers(0, 3, size=4))
    params = model.init(jax.random.key(seed), (6, 5, channels), F64)
    loss = losses.softmax_cross_entropy
    hand_vg = backprop.value_and_grad(model, loss)
    both = jax.jit(lambda p: (hand_vg(p, x, y),
                              jax.value_and_grad(lambda q: loss(model.apply(q, x), y))(p)))
    (value, hand), (auto_value, auto) = both(params)
    np.testing.assert_allclose(value, auto_value, rtol=1e-13)
    _close(hand, auto)


def test_conv_nets_through_fit_under_both_engines_and_sweep():
    """A conv net (conv, ReLU, max-pool, layer norm, dense) trains the same under both
    engines; a sweep of it (the CPU default: a loop, never vmapped convolutions) gives
    each configuration what fit gives it."""
    model = _conv_net(3, 3, 2, "max", "relu")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 6, 5, 3)), rng.integers(0, 3, size=12)
    sce = losses.softmax_cross_entropy
    lrs = [0.05, 0.2]
    # One optimizer, the learning rate set in the state: fit compiles once per engine.
    opt = optim.sgd(0.1)
    res = sweep.run(model, sce, opt, x, y, sweep.grid(learning_rate=lrs), epochs=2,
                    batch_size=4, dtype=F64)
    if jax.default_backend() == "cpu":
        assert res.strategy != "vmap"
    state0 = train.init_state(model, opt, jax.random.key(0), x.shape[1:], dtype=F64)
    for i, lr in enumerate(lrs):
        state = dataclasses.replace(state0, opt_state=optim.set_hyperparams(
            state0.opt_state, learning_rate=jnp.asarray(lr, F64)))
        s1, h1 = train.fit(model, sce, opt, state, x, y, epochs=2, batch_size=4,
                           progress=False)
        np.testing.assert_allclose(res.history["loss"][i], h1["loss"], rtol=1e-9)
        _close(res.params_of(i), s1.params, rtol=1e-9)
    s2, h2 = train.fit(model, sce, opt, state, x, y, epochs=2, batch_size=4, engine="jax",
                       progress=False)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-10)
    _close(s1.params, s2.params, rtol=1e-9)


# ---- bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("make,shape,match", [
    (lambda: nn.conv2d(4, 3), (28, 28), r"no channel axis.*x\[\.\.\., None\]"),
    (lambda: nn.conv2d(4, 3), (1, 28, 28), r"channels-first.*x\.transpose\(0, 2, 3, 1\)"),
    (lambda: nn.conv2d(4, 3), (3, 32, 32), r"channels-last"),
    (lambda: nn.conv2d(4, 7), (5, 5, 1), r"kernel \(7, 7\) is larger than the padded input"),
    (lambda: nn.max_pool(3, 3), (2, 8, 1), r"max_pool: window \(3, 3\) is larger"),
    (lambda: nn.avg_pool(2, 2), (28, 28), r"avg_pool.*no channel axis"),
])
def test_bad_image_shapes_name_the_fix(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make().init(jax.random.key(0), shape)


@pytest.mark.parametrize("make,match", [
    (lambda: nn.conv2d(4, 0), r"conv2d: kernel_size must be an int >= 1"),
    (lambda: nn.conv2d(4, 3, stride=0), r"conv2d: stride must be an int >= 1"),
    (lambda: nn.conv2d(0, 3), r"conv2d: features must be a positive int"),
    (lambda: nn.conv2d(4, 3, padding="FULL"), r"conv2d: padding must be"),
    (lambda: nn.conv2d(4, 3, padding=-1), r"conv2d: padding must be"),
    (lambda: nn.max_pool(0, 1), r"max_pool: window must be an int >= 1"),
    (lambda: nn.avg_pool(2, (1, 0)), r"avg_pool: stride must be"),
    (lambda: nn.layer_norm(eps=0), r"layer_norm: eps must be > 0"),
    (lambda: nn.max_pool(2), r"max_pool: give the stride, .*max_pool\(2, 2\) moves the window "
                             r"by its size .*max_pool\(2, 1\) by one"),
    (lambda: nn.avg_pool((3, 2)), r"avg_pool: give the stride, .*avg_pool\(\(3, 2\), 1\)"),
])
def test_bad_layer_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_channel_first_batch_at_apply_names_the_transpose():
    layer = nn.conv2d(2, 3)
    params = layer.init(jax.random.key(0), (8, 8, 3))
    with pytest.raises(ValueError, match=r"x\.transpose\(0, 2, 3, 1\)"):
        layer.apply(params, jnp.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"batch of images \(N, H, W, C\).*one image "
                                         r"without the batch axis \(x\[None\]"):
        layer.apply(params, jnp.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match=r"max_pool: .*either one image .* or a batch without "
                                         r"a channel axis \(x\[\.\.\., None\] gives "
                                         r"\(2, 8, 8, 1\)\)"):
        nn.max_pool(2, 2).apply(nn.NoParams(), jnp.zeros((2, 8, 8)))


def test_fit_and_evaluate_name_the_missing_channel_axis_as_a_data_problem():
    # MNIST loaders give (N, 28, 28): the error names the caller and the fix, not "params"
    model = nn.serial(nn.conv2d(2, 3), nn.max_pool(2, 2), nn.flatten(), nn.dense(3))
    opt = optim.sgd(0.1)
    state = train.init_state(model, opt, jax.random.key(0), (8, 8, 1))
    x, y = np.zeros((6, 8, 8), np.float32), np.arange(6) % 3
    fix = r"got shape \(6, 8, 8\): this looks like a batch without a channel axis " \
          r"\(x\[\.\.\., None\] gives \(6, 8, 8, 1\)\)"
    with pytest.raises(ValueError, match=r"^fit: conv2d: .*" + fix):
        train.fit(model, losses.softmax_cross_entropy, opt, state, x, y, epochs=1,
                  progress=False)
    with pytest.raises(ValueError, match=r"^fit \(validation_data\): conv2d: .*" + fix):
        train.fit(model, losses.softmax_cross_entropy, opt, state, x[..., None], y, epochs=1,
                  progress=False,
                  validation_data=(x, y))
    with pytest.raises(ValueError, match=r"^evaluate: conv2d: .*" + fix):
        train.evaluate(model, losses.softmax_cross_entropy, state.params, x, y)


# ---- Nielsen's network3 set-ups and the chapter-6 script -------------------------------

def test_network3_matches_the_book():
    from funcnn import book
    model, eta, lmbda = book.network3("dbl_conv_relu")
    assert (eta, lmbda) == (0.03, 0.1)
    params = model.init(jax.random.key(0), (28, 28, 1))
    shapes = [leaf.shape for leaf in jax.tree.leaves(params)]
    assert shapes == [(5, 5, 1, 20), (20,), (5, 5, 20, 40), (40,), (640, 100), (100,),
                      (100, 10), (10,)]
    conv1, conv2, fc, soft = params[0], params[3], params[7], params[9]
    # N(0, 1/n_out), n_out = filters * 25 / 4; biases N(0, 1); the softmax layer zero.
    np.testing.assert_allclose(np.std(conv2.w), np.sqrt(4 / (40 * 25)), rtol=0.05)
    np.testing.assert_allclose(np.std(conv1.w), np.sqrt(4 / (20 * 25)), rtol=0.15)
    np.testing.assert_allclose(np.std(fc.w), np.sqrt(1 / 100), rtol=0.05)
    assert 0.5 < np.std(conv2.b) < 1.5 and np.all(soft.w == 0) and np.all(soft.b == 0)
    assert model.output_shape((28, 28, 1)) == (10,)
    pen = book.network3_penalty(params, 0.1, 5000)
    # 0.5 * lmbda * sum(W^2) / num_batches over every layer's weights, no biases.
    want = 0.5 * 0.1 / 5000 * sum(float(jnp.sum(p.w ** 2)) for p in (conv1, conv2, fc, soft))
    np.testing.assert_allclose(pen.value(params), want, rtol=1e-5)
    assert book.network3_penalty(params, 0.0, 5000) is None
    with pytest.raises(ValueError, match="unknown network"):
        book.network3("lenet")


def test_nielsen_conv_script_pieces(tmp_path, monkeypatch):
    """The chapter-6 script end to end on MNIST-shaped random images (the real run
    needs the MNIST files): the expanded set, chunked accuracy, and a run folder with
    Nielsen's figure (test accuracy at the best validation epoch)."""
    import importlib.util
    import sys
    from pathlib import Path

    from funcnn import experiment
    path = Path(__file__).resolve().parents[1] / "experiments" / "nielsen_conv.py"
    spec = importlib.util.spec_from_file_location("_exp_nielsen_conv", path)
    nc = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, nc)
    spec.loader.exec_module(nc)

    img = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28, 1)
    big = nc.shifted(img)
    assert big.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(big[0], img[0])
    np.testing.assert_array_equal(big[1, 1:], img[0, :-1])        # down one pixel
    assert np.all(big[1, 0] == 0) and np.all(big[4, :, -1] == 0)  # zeros shifted in

    rng = np.random.default_rng(0)

    def fake(n):
        return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n)

    model, _, _ = nc.book.network3("basic_conv")
    params = model.init(jax.random.key(0), (28, 28, 1))
    xv, yv = fake(11)  # two whole chunks of 4 and a remainder of 3
    want = int(np.sum(np.argmax(model.apply(params, xv), 1) == yv))
    assert int(nc.counter(model, chunk=4)(params, xv, yv)) == want

    monkeypatch.setattr(nc, "load", lambda cfg: (fake(40), fake(30), fake(20)))
    cfg = nc.Config(network="basic_conv", epochs=2, train_size=40)
    result = experiment.execute("nielsen_conv", cfg, nc.run, seed=0, runs_dir=tmp_path,
                                plots=False)
    assert set(result) >= {"test_accuracy_at_best_val", "best_val_accuracy", "best_epoch"}
    assert cfg.eta == 0.1 and nc.Config(network="dbl_conv_relu").lmbda == 0.1
