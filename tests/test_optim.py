"""Tests for funcnn.optim: convergence, agreement with numpy (both books' forms), no retracing,
vmap, wrappers in fit, errors. Equality with optax itself is in test_optax_equal.py."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import dataclasses  # noqa: E402
import functools  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from funcnn import optim  # noqa: E402

O = optim


# ------------------------------------------------------------------ helpers --
def parabola(x):
    return jnp.sum(x**2)


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def minimize(opt, f, x0, steps):
    """Run ``steps`` updates of ``opt`` on ``f`` from ``x0`` inside one lax.scan."""

    def body(carry, _):
        x, s = carry
        u, s = opt.update(jax.grad(f)(x), s, x)
        return (O.apply_updates(x, u), s), None

    run = jax.jit(lambda x: jax.lax.scan(body, (x, opt.init(x)), None, length=steps)[0][0])
    return run(x0)


def trajectory(opt, params, grads):
    """Params after each update, for a stacked pytree of gradients (leading axis = step)."""

    def body(carry, g):
        p, s = carry
        u, s = opt.update(g, s, p)
        p = O.apply_updates(p, u)
        return (p, s), p

    return jax.jit(lambda p, gs: jax.lax.scan(body, (p, opt.init(p)), gs)[1])(params, grads)


# ------------------------------------------------------------- convergence --
CONVERGENCE = {  # name: (optimizer for the parabola, optimizer for Rosenbrock)
    "sgd": (lambda: O.sgd(0.1), lambda: O.sgd(2e-3)),
    "momentum": (lambda: O.sgd(0.05, momentum=0.9), lambda: O.sgd(5e-4, momentum=0.9)),
    "momentum_nnfs": (lambda: O.nnfs.sgd(0.05, momentum=0.9),
                      lambda: O.nnfs.sgd(5e-4, momentum=0.9)),
    "nesterov": (lambda: O.sgd(0.05, momentum=0.9, nesterov=True),
                 lambda: O.sgd(5e-4, momentum=0.9, nesterov=True)),
    "nesterov_nnfs": (lambda: O.chain(O.scale_by_learning_rate(0.05), O.trace(0.9, True)),
                      lambda: O.chain(O.scale_by_learning_rate(5e-4), O.trace(0.9, True))),
    "adagrad": (lambda: O.adagrad(0.5), lambda: O.adagrad(1.0)),
    "adagrad_nnfs": (lambda: O.nnfs.adagrad(0.5), lambda: O.nnfs.adagrad(1.0)),
    "rmsprop": (lambda: O.rmsprop(O.inverse_time_decay(0.01, 1e-2)),
                lambda: O.rmsprop(O.inverse_time_decay(0.01, 1e-2))),
    "rmsprop_nnfs": (lambda: O.nnfs.rmsprop(0.01, decay=1e-2),
                     lambda: O.nnfs.rmsprop(0.01, decay=1e-2)),
    "adam": (lambda: O.adam(0.05), lambda: O.adam(0.01)),
    "adam_nnfs": (lambda: O.nnfs.adam(0.05), lambda: O.nnfs.adam(0.01)),
    "adamw": (lambda: O.adamw(0.05), lambda: O.adamw(0.01)),
    "clip_adam": (lambda: O.chain(O.clip_by_global_norm(1.0), O.adam(0.05)),
                  lambda: O.chain(O.clip_by_global_norm(1.0), O.adam(0.01))),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_converges_on_parabola_and_rosenbrock(name, dtype):
    make_p, make_r = CONVERGENCE[name]
    x = minimize(make_p(), parabola, jnp.array([1.0, -2.0, 3.0], dtype), 10_000)
    assert x.dtype == dtype
    np.testing.assert_allclose(np.asarray(x), 0.0, atol=1e-2)
    x = minimize(make_r(), rosenbrock, jnp.array([-1.2, 1.0], dtype), 10_000)
    assert x.dtype == dtype
    np.testing.assert_allclose(np.asarray(x), 1.0, atol=1e-2)


# ------------------------------------------------------ numpy reference --
def numpy_run(kind, w, grads, lr_at, conv="optax", momentum=0.0, nesterov=False, rho=0.9,
              b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, cache0=0.0):
    """Independent numpy version of every update rule; returns w after each step."""
    velocity, m, v, cache, out = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w), \
        np.full_like(w, cache0), []
    for t, g in enumerate(grads):
        lr = lr_at(t)
        if kind == "sgd" and conv == "nnfs":  # NNFS chapter 10, written as in the book
            weight_updates = momentum * velocity - lr * g
            velocity = weight_updates
            if nesterov:
                weight_updates = momentum * velocity - lr * g
        elif kind == "sgd":  # optax.trace followed by scale(-lr)
            velocity = g + momentum * velocity
            weight_updates = -lr * (g + momentum * velocity if nesterov else velocity)
        elif kind == "adagrad":
            cache = cache + g**2
            denom = np.sqrt(cache) + eps if conv == "nnfs" else np.sqrt(cache + eps)
            weight_updates = -lr * g / denom
        elif kind == "rmsprop":
            cache = rho * cache + (1 - rho) * g**2
            denom = np.sqrt(cache) + eps if conv == "nnfs" else np.sqrt(cache + eps)
            weight_updates = -lr * g / denom
        else:  # adam / adamw
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
            weight_updates = -lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * w)
        w = w + weight_updates
        out.append(w)
    return np.stack(out)


def nnfs_decay(lr, decay):
    return lambda t: lr / (1 + decay * t)


def np_cosine(init, steps, alpha):
    return lambda t: init * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * min(t, steps) / steps))
                             + alpha)


def lr_schedule(schedule):
    """The book's form puts the learning rate before the momentum trace."""
    return O.scale_by_learning_rate(schedule)


REFERENCE = {  # name: (funcnn optimizer, numpy kind, learning rate at t, numpy options)
    "sgd": (O.sgd(0.1), "sgd", nnfs_decay(0.1, 0), {}),
    "sgd_decay": (O.sgd(O.inverse_time_decay(0.1, 0.05)), "sgd", nnfs_decay(0.1, 0.05), {}),
    "momentum_decay": (O.sgd(O.inverse_time_decay(0.1, 0.05), momentum=0.9), "sgd",
                       nnfs_decay(0.1, 0.05), {"momentum": 0.9}),
    "momentum_nnfs_decay": (O.nnfs.sgd(0.1, decay=0.05, momentum=0.9), "sgd",
                            nnfs_decay(0.1, 0.05), {"momentum": 0.9, "conv": "nnfs"}),
    "nesterov_decay": (O.sgd(O.inverse_time_decay(0.1, 0.05), momentum=0.8, nesterov=True),
                       "sgd", nnfs_decay(0.1, 0.05), {"momentum": 0.8, "nesterov": True}),
    "nesterov_nnfs_decay": (O.chain(lr_schedule(O.inverse_time_decay(0.1, 0.05)),
                                    O.trace(0.8, nesterov=True)), "sgd", nnfs_decay(0.1, 0.05),
                            {"momentum": 0.8, "nesterov": True, "conv": "nnfs"}),
    "momentum_nnfs_cosine": (O.chain(lr_schedule(O.cosine_decay_schedule(0.1, 50, 0.1)),
                                     O.trace(0.9)), "sgd", np_cosine(0.1, 50, 0.1),
                             {"momentum": 0.9, "conv": "nnfs"}),
    "adagrad": (O.adagrad(0.1), "adagrad", nnfs_decay(0.1, 0),
                {"eps": 1e-7, "cache0": 0.1}),
    "adagrad_nnfs_decay": (O.nnfs.adagrad(0.1, decay=0.01), "adagrad",
                           nnfs_decay(0.1, 0.01), {"eps": 1e-7, "conv": "nnfs"}),
    "rmsprop": (O.rmsprop(0.01, decay=0.8), "rmsprop", nnfs_decay(0.01, 0),
                {"rho": 0.8, "eps": 1e-8}),
    "rmsprop_nnfs_decay": (O.nnfs.rmsprop(0.01, decay=0.01), "rmsprop",
                           nnfs_decay(0.01, 0.01), {"eps": 1e-7, "conv": "nnfs"}),
    "rmsprop_cosine": (O.rmsprop(O.cosine_decay_schedule(0.01, 60)), "rmsprop",
                       np_cosine(0.01, 60, 0.0), {"eps": 1e-8}),
    "adam": (O.adam(0.01), "adam", nnfs_decay(0.01, 0), {"eps": 1e-8}),
    "adam_nnfs_decay": (O.nnfs.adam(0.01, decay=0.02), "adam",
                        nnfs_decay(0.01, 0.02), {"eps": 1e-7}),
    "adam_exponential": (O.adam(O.exponential_decay(0.01, 20, 0.5), b1=0.8, b2=0.99), "adam",
                         lambda t: 0.01 * 0.5 ** (t / 20), {"b1": 0.8, "b2": 0.99, "eps": 1e-8}),
    "adamw_decay": (O.adamw(O.inverse_time_decay(0.01, 0.01), weight_decay=0.1), "adam",
                    nnfs_decay(0.01, 0.01), {"weight_decay": 0.1, "eps": 1e-8}),
}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_matches_numpy_over_100_steps(name):
    opt, kind, lr_at, options = REFERENCE[name]
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(2, 3)), "b": rng.normal(size=(3,))}
    # Gradient magnitudes from 1e-7 to 1, so eps and where it sits really matter.
    grads = {k: rng.normal(size=(100, *v.shape)) * 10.0 ** rng.uniform(-7, 0, size=v.shape)
             for k, v in params.items()}
    got = trajectory(opt, jax.tree.map(jnp.asarray, params), grads)
    for k in params:
        want = numpy_run(kind, params[k], grads[k], lr_at, **options)
        np.testing.assert_allclose(np.asarray(got[k]), want, rtol=1e-6, atol=1e-12)


def test_the_books_forms_really_differ_from_optax():
    """The NNFS and optax forms must give different results where the table says they do."""
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.linspace(1e-6, 1.0, 30).reshape(10, 3)}
    pairs = [(O.sgd(O.inverse_time_decay(0.1, 0.1), momentum=0.9),
              O.nnfs.sgd(0.1, decay=0.1, momentum=0.9)),
             (O.adagrad(0.1), O.nnfs.adagrad(0.1)),
             (O.rmsprop(1e-3), O.nnfs.rmsprop()), (O.adam(1e-3), O.nnfs.adam())]
    for optax_form, book_form in pairs:
        a, b = (trajectory(o, params, grads)["w"] for o in (optax_form, book_form))
        assert not np.allclose(a, b, rtol=1e-9, atol=0)
    # ... and agree while the learning rate is constant (momentum): v_book = -lr * v_optax
    a, b = (trajectory(o, params, grads)["w"]
            for o in (O.sgd(0.1, momentum=0.9), O.nnfs.sgd(0.1, momentum=0.9)))
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_default_eps():
    p = jnp.zeros(2)
    assert float(O.hyperparams(O.adam(1e-3).init(p))["eps"]) == 1e-8
    assert float(O.hyperparams(O.nnfs.adam().init(p))["eps"]) == 1e-7
    assert float(O.hyperparams(O.nnfs.rmsprop().init(p))["eps"]) == 1e-7
    assert float(O.hyperparams(O.nnfs.adam(epsilon=1e-3).init(p))["eps"]) == 1e-3


# ------------------------------------------------------------------ dtypes --
def test_hparams_and_updates_keep_the_params_dtype():
    for dtype in (jnp.float32, jnp.float64):
        p = (jnp.ones(3, dtype), jnp.ones((2, 2), dtype))
        s = O.adam(0.1).init(p)
        assert all(v.dtype == dtype for v in O.hyperparams(s).values())
        u, s = O.adam(0.1).update(p, s, p)
        assert all(x.dtype == dtype for x in jax.tree.leaves(u))
        assert all(x.dtype in (dtype, jnp.int32) for x in jax.tree.leaves(s))
    mixed = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.float64)}
    opt = O.sgd(0.1, momentum=0.9)
    u, s = opt.update(mixed, opt.init(mixed))
    new = O.apply_updates(mixed, u)
    assert new["a"].dtype == jnp.float32 and new["b"].dtype == jnp.float64
    assert s.states[0].slots["trace"]["a"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(new["a"]), 0.9)


# ------------------------------------------------------------ no retracing --
def test_set_hyperparams_does_not_retrace():
    traces = 0
    opt = O.chain(O.clip_by_global_norm(10.0), O.adam(O.inverse_time_decay(0.1, 0.01)))
    p, g = jnp.ones(3), jnp.array([0.5, -1.0, 2.0])

    @jax.jit
    def step(p, s):  # two updates: Adam's first step does not depend on b1, b2 or decay
        nonlocal traces
        traces += 1
        for _ in range(2):
            u, s = opt.update(g * p, s, p)
            p = O.apply_updates(p, u)
        return p, s

    s = opt.init(p)
    first, _ = step(p, s)
    for name, value in [("learning_rate", 0.5), ("b1", 0.5), ("b2", 0.9), ("eps", 1e-3),
                        ("decay", 0.5), ("max_norm", 0.1)]:
        changed, _ = step(p, O.set_hyperparams(s, **{name: value}))
        assert not np.allclose(changed, first), name
    assert traces == 1
    # the new value acts exactly like building the optimizer with it
    fresh, want = O.adam(O.inverse_time_decay(0.5, 0.01)), p
    fresh_state = fresh.init(p)
    for _ in range(2):
        u, fresh_state = fresh.update(g * want, fresh_state, want)
        want = want + u
    got, _ = step(p, O.set_hyperparams(s, learning_rate=0.5))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_update_is_static_and_equal_across_hyperparameter_values():
    traces = 0

    @functools.partial(jax.jit, static_argnums=0)
    def step(update, p, s, g):
        nonlocal traces
        traces += 1
        return update(g, s, p)[0]

    p, g = jnp.ones(3), jnp.array([0.5, -1.0, 2.0])
    results = []
    for opt in [O.adam(0.01), O.adam(0.02), O.adam(0.03, b1=0.5, eps=1e-3)]:
        results.append(step(opt.update, p, opt.init(p), g))
    assert traces == 1
    np.testing.assert_allclose(results[1], 2 * results[0], rtol=1e-12)
    a = O.sgd(O.cosine_decay_schedule(0.1, 10), momentum=0.9)
    b = O.sgd(O.cosine_decay_schedule(0.3, 20), momentum=0.5)
    assert a.update == b.update and hash(a.update) == hash(b.update)
    assert O.sgd(0.1, 0.9).update != O.sgd(0.1, 0.9, nesterov=True).update
    assert O.sgd(0.1, 0.9).update != O.nnfs.sgd(0.1, momentum=0.9).update
    assert O.adam(0.1).update != O.adamw(0.1).update
    assert O.sgd(0.1).update != O.sgd(O.cosine_decay_schedule(0.1, 10)).update
    with pytest.raises(dataclasses.FrozenInstanceError):
        O.trace(0.9).update.nesterov = True


# --------------------------------------------------------------------- vmap --
def _train(opt_state, opt, steps=100):
    x = jnp.array([1.0, -2.0, 3.0])

    def body(carry, _):
        x, s = carry
        u, s = opt.update(jax.grad(parabola)(x), s, x)
        return (O.apply_updates(x, u), s), None

    return jax.lax.scan(body, (x, opt_state), None, length=steps)[0][0]


def test_vmap_over_learning_rates_equals_the_loop():
    lrs = jnp.array([0.001, 0.01, 0.05])
    x0 = jnp.zeros(3)
    def adam(lr):
        return O.adam(O.inverse_time_decay(lr, 1e-3))

    opt = O.chain(O.clip_by_global_norm(2.0), adam(0.1))
    batched = jax.jit(jax.vmap(
        lambda lr: _train(O.set_hyperparams(opt.init(x0), learning_rate=lr), opt)))(lrs)
    built = jax.jit(jax.vmap(  # constructing the optimizer from a tracer works too
        lambda lr: _train(adam(lr).init(x0), adam(lr))))(lrs)
    for i, lr in enumerate([0.001, 0.01, 0.05]):
        one = O.chain(O.clip_by_global_norm(2.0), adam(lr))
        np.testing.assert_allclose(batched[i], _train(one.init(x0), one), rtol=1e-10)
        plain = adam(lr)
        np.testing.assert_allclose(built[i], _train(plain.init(x0), plain), rtol=1e-10)
    assert not np.allclose(batched[0], batched[2])


# ---------------------------------------------------------- clipping, chain --
def test_clip_by_global_norm_matches_numpy():
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]])}  # global norm 13
    assert float(O.global_norm(g)) == pytest.approx(13.0)
    clip = O.clip_by_global_norm(6.5)
    u, _ = clip.update(g, clip.init(g))
    np.testing.assert_allclose(u["a"], [1.5, 2.0], rtol=1e-12)
    np.testing.assert_allclose(u["b"], [[6.0]], rtol=1e-12)
    loose = O.clip_by_global_norm(20.0)
    u, _ = loose.update(g, loose.init(g))
    np.testing.assert_allclose(u["a"], [3.0, 4.0], rtol=1e-12)
    zero = O.clip_by_global_norm(0.0)  # as optax: every update becomes 0
    u, _ = zero.update(g, zero.init(g))
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    u, _ = zero.update(jax.tree.map(jnp.zeros_like, g), zero.init(g))  # optax: NaN; here 0
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))


def test_init_none_as_in_optax():
    for opt in (O.scale(0.1), O.clip_by_global_norm(1.0), O.adam(1e-3), O.sgd(0.1, 0.9)):
        state = opt.init(None)
        assert O.hyperparams(state)  # the hyperparameters are there, in the default float
        updates, _ = opt.update(None, state)
        assert updates is None


def test_chain_clip_then_adam_matches_numpy():
    rng = np.random.default_rng(1)
    w0, grads = rng.normal(size=4), rng.normal(size=(100, 4)) * 3
    got = trajectory(O.chain(O.clip_by_global_norm(5.0), O.adam(0.01)), jnp.asarray(w0), grads)
    norms = np.linalg.norm(grads, axis=1, keepdims=True)
    clipped = np.where(norms < 5.0, grads, grads / norms * 5.0)
    assert np.any(norms > 5.0) and np.any(norms < 5.0)
    want = numpy_run("adam", w0, clipped, lambda t: 0.01)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_chain_hyperparameter_names():
    p = jnp.ones(2)
    # sgd(lr) is itself the chain (scale_by_learning_rate(lr),), so its name is one deeper
    s = O.chain(O.clip_by_global_norm(1.0), O.sgd(0.1), O.sgd(0.2)).init(p)
    names = O.hyperparams(s)
    assert set(names) == {"max_norm", "1/0/learning_rate", "2/0/learning_rate"}
    s2 = O.set_hyperparams(s, max_norm=3.0, **{"2/0/learning_rate": 0.7, "0/max_norm": 4.0})
    assert float(O.hyperparams(s2)["max_norm"]) == 4.0
    assert float(O.hyperparams(s2)["2/0/learning_rate"]) == 0.7
    assert float(O.hyperparams(s2)["1/0/learning_rate"]) == 0.1
    with pytest.raises(ValueError, match=r"several links.*'1/0/learning_rate', '2/0/learning"):
        O.set_hyperparams(s, learning_rate=0.5)
    deep = O.chain(O.chain(O.chain(O.scale(2.0)), O.trace(0.5)), O.adam(0.1)).init(p)
    assert set(O.hyperparams(deep)) == {"step_size", "momentum", "b1", "b2", "eps", "eps_root",
                                        "learning_rate"}
    deep = O.set_hyperparams(deep, step_size=3.0, **{"0/1/momentum": 0.25})
    assert float(deep.states[0].states[0].states[0].hparams["step_size"]) == 3.0
    assert float(O.hyperparams(deep)["momentum"]) == 0.25
    # the book's SGD shows the book's names
    assert set(O.hyperparams(O.nnfs.sgd(1.0, decay=1e-3, momentum=0.9).init(p))) == {
        "learning_rate", "decay", "momentum"}
    # the book's RMSprop has two "decay"s: the smoothing and the learning-rate decay
    book = O.nnfs.rmsprop(0.02, decay=1e-5, rho=0.999).init(p)
    assert float(O.hyperparams(book)["0/decay"]) == pytest.approx(0.999)
    assert float(O.hyperparams(book)["1/decay"]) == pytest.approx(1e-5)


# --------------------------------------------------------------- schedules --
STEPS = np.arange(0, 40)
SCHEDULES = {
    "constant": (O.constant_schedule(0.3), lambda t: 0.3 + 0 * t),
    "inverse_time": (O.inverse_time_decay(0.1, 0.5), lambda t: 0.1 / (1 + 0.5 * t)),
    "exponential": (O.exponential_decay(1.0, 10, 0.5), lambda t: 0.5 ** (t / 10)),
    "exponential_staircase": (O.exponential_decay(1.0, 10, 0.5, staircase=True),
                              lambda t: 0.5 ** np.floor(t / 10)),
    "cosine": (O.cosine_decay_schedule(2.0, 25, alpha=0.1),
               lambda t: 2.0 * (0.9 * 0.5 * (1 + np.cos(np.pi * np.minimum(t, 25) / 25)) + 0.1)),
    "linear": (O.linear_schedule(0.2, 1.0, 10),
               lambda t: np.where(t < 10, 0.2 + 0.8 * t / 10, 1.0)),
    "polynomial": (O.polynomial_schedule(1.0, 0.0, 2.0, 20, 5),
                   lambda t: (1 - np.clip(t - 5, 0, 20) / 20) ** 2),
    "warmup_then_exponential": (
        O.join_schedules([O.linear_schedule(0.0, 1.0, 10), O.exponential_decay(1.0, 20, 0.1)],
                         [10]),
        lambda t: np.where(t < 10, t / 10, 0.1 ** ((t - 10) / 20))),
    "warmup_cosine": (O.warmup_cosine_decay_schedule(0.0, 1.0, 5, 30, end_value=0.1),
                      lambda t: np.where(t < 5, t / 5, 0.1 + 0.9 * 0.5 * (
                          1 + np.cos(np.pi * np.clip(t - 5, 0, 25) / 25)))),
    "piecewise": (O.piecewise_constant_schedule(1.0, {10: 0.5, 20: 0.2}),
                  lambda t: np.select([t < 10, t < 20], [1.0, 0.5], 0.1)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_matches_closed_form(name):
    schedule, closed_form = SCHEDULES[name]
    got = jax.vmap(schedule)(jnp.asarray(STEPS))
    np.testing.assert_allclose(np.asarray(got), closed_form(STEPS.astype(float)),
                               rtol=1e-12, atol=1e-15)


def test_schedule_inside_optimizer_uses_step_count():
    """SGD's update at step t is -schedule(t) * g, and schedule hparams can be changed."""
    opt = O.sgd(O.piecewise_constant_schedule(1.0, {2: 0.5, 4: 0.2}))
    p, g = jnp.zeros(1), jnp.ones(1)
    s, seen = opt.init(p), []
    for _ in range(6):
        u, s = opt.update(g, s)
        seen.append(-float(u[0]))
    np.testing.assert_allclose(seen, [1.0, 1.0, 0.5, 0.5, 0.1, 0.1], rtol=1e-12)
    s = O.set_hyperparams(s, scales=jnp.array([2.0, 3.0]))
    assert -float(opt.update(g, s)[0][0]) == 6.0
    assert set(O.hyperparams(s)) == {"init_value", "boundaries", "scales"}


def test_plain_callable_learning_rate():
    opt = O.sgd(lambda t: 1.0 / (t + 1))
    s, p, g = None, jnp.zeros(1), jnp.ones(1)
    s = opt.init(p)
    steps = []
    for _ in range(3):
        u, s = opt.update(g, s)
        steps.append(-float(u[0]))
    np.testing.assert_allclose(steps, [1.0, 0.5, 1 / 3])


# ------------------------------------------------ wrappers, inside fit --
def test_inject_hyperparams_and_multisteps_train_inside_fit():
    from funcnn import losses, nn, train
    from funcnn.data import spiral_data

    x, y = spiral_data(20, 3, seed=0)
    model = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))

    def run(opt, **kw):
        state = train.init_state(model, opt, jax.random.key(0), (2,), dtype=jnp.float64)
        return train.fit(model, losses.softmax_cross_entropy, opt, state, x, y, epochs=2,
                         batch_size=20, progress=False, **kw)

    plain = run(O.adam(0.01))
    injected = run(O.inject_hyperparams(O.adam)(learning_rate=0.01))
    for a, b in zip(jax.tree.leaves(plain[0].params), jax.tree.leaves(injected[0].params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # MultiSteps(k=3) on batches of 20 moves the weights every third batch
    multi = run(O.MultiSteps(O.adam(0.01), 3, accumulator_dtype=None))
    assert int(multi[0].opt_state.gradient_step) == 2  # 6 batches in 2 epochs


def test_a_users_transform_must_keep_arrays_in_its_state():
    bad = O.Optimizer(lambda p: {"lr": 0.1}, lambda g, s, p=None: (g, s))
    with pytest.raises(TypeError, match=r"pytree of arrays.*state.*\['lr'\].*jnp.asarray"):
        O.chain(bad, O.sgd(0.1)).init(jnp.ones(2))
    good = O.Optimizer(lambda p: {"lr": jnp.asarray(0.1)}, lambda g, s, p=None: (g, s))
    O.chain(good, O.sgd(0.1)).init(jnp.ones(2))
    from funcnn import nn, train
    with pytest.raises(TypeError, match=r"init_state: the optimizer state must be a pytree"):
        train.init_state(nn.dense(2), bad, jax.random.key(0), (3,))


def test_optax_traps_are_gone():
    """rmsprop's decay is the smoothing; exponential_decay takes optax's argument order."""
    p, g = jnp.zeros(1), jnp.ones(1)
    opt = O.rmsprop(0.01, decay=0.9)
    s, lrs = opt.init(p), []
    for _ in range(11):
        lrs.append(float(O.learning_rate(opt.update, s)))
        _, s = opt.update(g, s)
    assert lrs == [0.01] * 11
    sched = O.exponential_decay(0.1, 1000, 0.99)
    assert float(sched(100)) == pytest.approx(0.1 * 0.99 ** 0.1)
    with pytest.raises(ValueError, match=r"decay_rate=1000 > 1 .* grow without bound.*optax"):
        O.exponential_decay(0.1, 0.99, 1000)  # the old funcnn order


@pytest.mark.parametrize("make, match", [
    (lambda: O.adam(0.05, decay=5e-7), r"adam\(\) got an unexpected keyword 'decay'.*"
                                       r"inverse_time_decay.*optim.nnfs.adam"),
    (lambda: O.adam(0.1, beta_1=0.9), r"'beta_1': use b1"),
    (lambda: O.adam(0.1, epsilon=1e-7), r"'epsilon': use eps"),
    (lambda: O.rmsprop(0.1, rho=0.9), r"'rho': use decay"),
    (lambda: O.sgd(0.1, convention="nnfs"), r"'convention'.*optim.nnfs"),
    (lambda: O.sgd(lr=0.1), r"'lr': use learning_rate"),
    (lambda: O.adam(0.1, bogus=1), r"'bogus': its keywords are \['learning_rate', 'b1'"),
])
def test_unknown_keywords_name_the_optax_spelling(make, match):
    with pytest.raises(TypeError, match=match):
        make()


# -------------------------------------------------------------- bad input --
@pytest.mark.parametrize("make, match", [
    (lambda: O.sgd(-0.1), r"scale_by_learning_rate: learning_rate must be finite and >= 0"),
    (lambda: O.adam(float("nan")), r"learning_rate must be finite"),
    (lambda: O.adam(0.1, b1=1.0), r"scale_by_adam: b1 must be finite and in \[0, 1\)"),
    (lambda: O.adamw(0.1, b2=-0.1), r"b2 must be .* in \[0, 1\)"),
    (lambda: O.adam(0.1, eps=-1e-8), r"eps must be .* >= 0"),
    (lambda: O.sgd(0.1, momentum=-0.5), r"trace: decay must be"),
    (lambda: O.inverse_time_decay(0.1, -1.0), r"inverse_time_decay: decay must be .* >= 0"),
    (lambda: O.rmsprop(0.1, decay=1.5), r"scale_by_rms: decay must be"),
    (lambda: O.adamw(0.1, weight_decay=-1.0), r"weight_decay must be"),
    (lambda: O.clip_by_global_norm(-1.0), r"max_norm must be"),
    (lambda: O.clip(-1.0), r"max_delta must be"),
    (lambda: O.cosine_decay_schedule(0.1, 0), r"decay_steps must be .* > 0"),
    (lambda: O.cosine_decay_schedule(0.1, 10, alpha=2.0), r"alpha must be .* in \[0, 1\]"),
    (lambda: O.exponential_decay(0.1, 10, -0.5), r"decay_rate must be"),
    (lambda: O.adam(1e39).init(jnp.ones(2, jnp.float32)),
     r"scale_by_learning_rate.init: learning_rate=1e\+39 is not finite in .* float32"),
    (lambda: O.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10), r"decay_steps .* must exceed"),
    (lambda: O.piecewise_constant_schedule(1.0, {5: -1.0}), r"scales must be >= 0"),
    (lambda: O.join_schedules([O.constant_schedule(1.0)], [5]), r"len\(boundaries\)"),
    (lambda: O.inverse_time_decay(0.1, float("inf")), r"decay must be finite"),
    (lambda: O.MultiSteps(O.sgd(0.1), 0), r"every_k_schedule must be an int >= 1"),
    (lambda: O.sgd(O.constant_schedule(-1.0)), r"learning rate at step 0 is -1.0, below 0"),
    (lambda: O.inject_hyperparams(O.adam, static_args="nope"), r"not keywords of adam"),
])
def test_bad_values_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types_and_states_raise():
    p = jnp.ones(2)
    with pytest.raises(TypeError, match=r"learning_rate must be a number .* got 'fast'"):
        O.sgd("fast")
    with pytest.raises(TypeError, match=r"every parameter must be a float array.*int"):
        O.adam(0.1).init(jnp.arange(3))
    with pytest.raises(TypeError, match=r"chain: expected one or more transforms"):
        O.chain()
    with pytest.raises(TypeError, match=r"chain.update: expected the ChainState of 2 links"):
        O.adam(0.1).update(p, O.chain(O.adam(0.1)).init(p))
    with pytest.raises(TypeError, match=r"ScaleByAdam.update: expected the state made by"):
        O.scale_by_adam().update(p, O.adam(0.1).init(p))
    with pytest.raises(ValueError, match=r"updates have structure"):
        O.adam(0.1).update((p, p), O.adam(0.1).init(p))
    with pytest.raises(ValueError, match=r"add_decayed_weights.update: needs the params"):
        O.adamw(0.1).update(p, O.adamw(0.1).init(p))
    with pytest.raises(ValueError, match=r"apply_updates: params have structure"):
        O.apply_updates((p, p), (p,))
    s = O.adam(0.1).init(p)
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'lr'.*'learning_rate'"):
        O.set_hyperparams(s, lr=0.1)
    with pytest.raises(ValueError, match=r"set_hyperparams: learning_rate must be .* >= 0"):
        O.set_hyperparams(s, learning_rate=-1.0)
    with pytest.raises(ValueError, match=r"must have shape \(\), got \(3,\).*vmap"):
        O.set_hyperparams(s, learning_rate=jnp.ones(3))
    with pytest.raises(TypeError, match=r"hyperparams: expected an optimizer state"):
        O.hyperparams({"learning_rate": 0.1})


def test_traced_values_skip_the_value_check():
    """Inside jit the value is unknown, so construction must not try to check it."""
    p = jnp.ones(2)
    out = jax.jit(lambda lr: O.hyperparams(O.adam(lr).init(p))["learning_rate"])(-1.0)
    assert float(out) == -1.0
