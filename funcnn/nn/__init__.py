"""Layers: each one value carrying ``init``, ``apply`` and its hand backward rule.

A layer holds no weights. ``init`` makes them, ``apply`` uses them::

    model = nn.serial(nn.dense(64), nn.relu(), nn.dense(3))
    params = model.init(jax.random.key(0), (2,))   # one example's shape, no batch axis
    logits = model.apply(params, x)                # x is batch-first: (N, 2)
    y = model.apply(params, x, key=k, train=True)  # the same signature for every layer

and ``backward_fn`` is the hand-derived rule that :mod:`funcnn.backprop` runs, written
beside the forward code with its derivation (one file per concept: ``dense``,
``activations``, ``dropout``, ``reshape``, ``conv``, ``pool``, ``norm``,
``combinators``). :class:`Layer` documents how to write your own; ``backprop.check``
verifies it.

Layout is batch-first and ``y = x @ W + b`` with ``W`` of shape ``(in, out)``, as in
stax and the NNFS book. Parameters are immutable pytrees: :class:`Dense` is a frozen
dataclass, layers without weights hold :class:`NoParams`, and ``serial`` holds a tuple
of its children's parameters. ``LAYERS`` lists the public constructors with a small
instance each, so a test can check every one of them.
"""

from collections.abc import Callable

from funcnn.nn.activations import (elementwise, elu, gelu, identity, leaky_relu, relu, sigmoid,
                                   silu, softmax, softmax_fn, softplus, tanh)
from funcnn.nn.combinators import residual, serial
from funcnn.nn.conv import Conv, conv2d
from funcnn.nn.dense import Dense, bias_initializers, dense, initializers
from funcnn.nn.dropout import dropout, dropout_mask
from funcnn.nn.layer import (ApplyFn, BackwardFn, ForwardFn, InitFn, Layer, NoParams, Run,
                             StatsFn, check_batch, check_params, layer_keys)
from funcnn.nn.norm import LayerNorm, layer_norm
from funcnn.nn.pool import avg_pool, max_pool
from funcnn.nn.reshape import flatten
from funcnn.nn.summary import summary

__all__ = [
    "Layer", "Dense", "Conv", "LayerNorm", "NoParams",
    "InitFn", "ApplyFn", "ForwardFn", "BackwardFn", "StatsFn", "Run",
    "serial", "residual", "dense", "conv2d", "max_pool", "avg_pool", "layer_norm",
    "relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "sigmoid", "tanh", "softmax",
    "identity", "dropout", "flatten",
    "elementwise", "summary", "initializers", "bias_initializers", "dropout_mask",
    "softmax_fn", "check_batch", "check_params", "layer_keys", "LAYERS",
]

# Layer names of stax, Flax, Equinox and PyTorch that funcnn spells otherwise, with its
# spelling: nn.Sequential(...) says to write nn.serial(...). (nn.Dense, nn.Conv and
# nn.LayerNorm exist: they are parameters, and say so when called as layers.)
OTHER_NAMES: dict[str, str] = {
    "Sequential": "nn.serial(layer, layer, ...)",
    "Linear": "nn.dense(out_features) (the input size comes from init's input_shape)",
    "MLP": "nn.serial(nn.dense(width), nn.relu(), ..., nn.dense(out))",
    "Conv2d": "nn.conv2d(features, kernel_size, stride, padding)",
    "Relu": "nn.relu()", "ReLU": "nn.relu()", "LeakyReLU": "nn.leaky_relu(negative_slope)",
    "Sigmoid": "nn.sigmoid()", "Tanh": "nn.tanh()", "Softmax": "nn.softmax()",
    "ELU": "nn.elu(alpha)", "GELU": "nn.gelu(approximate=True)", "SiLU": "nn.silu()",
    "swish": "nn.silu()", "Swish": "nn.silu()", "Softplus": "nn.softplus()",
    "LogSoftmax": ("logits and losses.softmax_cross_entropy (which takes log_softmax "
                   "itself); losses.log_softmax is the function"),
    "Identity": "nn.identity()", "Flatten": "nn.flatten()",
    "Dropout": ("nn.dropout(rate), rate being the probability of DROPPING (stax's "
                "Dropout(rate) keeps with probability rate)"),
    "MaxPool": "nn.max_pool(window, stride)", "MaxPool2d": "nn.max_pool(window, stride)",
    "AvgPool": "nn.avg_pool(window, stride)", "AvgPool2d": "nn.avg_pool(window, stride)",
    "BatchNorm": "nn.layer_norm() (funcnn has no batch norm)",
    "FanOut": "nn.residual(block) for y = x + block(x) (funcnn has no FanOut/FanInSum)",
    "FanInSum": "nn.residual(block) for y = x + block(x) (funcnn has no FanOut/FanInSum)",
    "parallel": "nn.residual(block) for y = x + block(x) (funcnn has no parallel)",
}


def __getattr__(name: str):
    if name in OTHER_NAMES:
        raise AttributeError(f"module 'funcnn.nn' has no attribute {name!r}; funcnn's "
                             f"spelling is {OTHER_NAMES[name]}")
    raise AttributeError(f"module 'funcnn.nn' has no attribute {name!r}")


# Every public layer constructor, with arguments for a small instance. The registry test
# in tests/test_backprop.py runs backprop.check on each.
LAYERS: dict[str, Callable[[], Layer]] = {
    "dense": lambda: dense(3),
    "relu": relu,
    "leaky_relu": lambda: leaky_relu(0.1),
    "elu": lambda: elu(0.5),
    "gelu": gelu,
    "silu": silu,
    "softplus": softplus,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "softmax": softmax,
    "identity": identity,
    "dropout": lambda: dropout(0.3),
    "flatten": flatten,
    "conv2d": lambda: conv2d(3, 3, padding="SAME"),
    "max_pool": lambda: max_pool(2, 2),
    "avg_pool": lambda: avg_pool(2, 1),
    "layer_norm": layer_norm,
    "serial": lambda: serial(dense(3), relu()),
    "residual": lambda: residual(serial(dense(4), tanh())),
}
