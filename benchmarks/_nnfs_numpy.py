"""The NNFS book's numpy classes (chapters 9-19), shared by the benchmark scripts.

Import from a script run as ``python benchmarks/bench_x.py``::

    from _nnfs_numpy import LayerDense, ActivationReLU, ActivationSoftmaxLossCCE, OptimizerAdam

The book's structure and arithmetic, with two departures: ``LayerDense`` takes its
initial weights (the caller picks the init and dtype) and creates Adam's slots up front,
and labels are integer class indices (no one-hot path).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LayerDense", "ActivationReLU", "ActivationSoftmaxLossCCE", "OptimizerAdam"]


class LayerDense:
    """``output = inputs @ weights + biases`` and its backward pass (chapters 3, 9)."""

    def __init__(self, weights, biases):
        self.weights, self.biases = weights.copy(), biases.reshape(1, -1).copy()
        self.weight_momentums = np.zeros_like(self.weights)
        self.weight_cache = np.zeros_like(self.weights)
        self.bias_momentums = np.zeros_like(self.biases)
        self.bias_cache = np.zeros_like(self.biases)

    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.dot(inputs, self.weights) + self.biases

    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        self.dinputs = np.dot(dvalues, self.weights.T)


class ActivationReLU:
    """``max(0, inputs)`` and its backward pass (chapters 4, 9)."""

    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.maximum(0, inputs)

    def backward(self, dvalues):
        self.dinputs = dvalues.copy()
        self.dinputs[self.inputs <= 0] = 0


class ActivationSoftmaxLossCCE:
    """Softmax then categorical cross-entropy, with the fused backward (chapter 9).

    ``forward`` keeps the probabilities in ``.output`` and returns the mean loss
    (probabilities clipped to [1e-7, 1 - 1e-7]); ``backward(self.output, y)`` sets
    ``.dinputs = (softmax - onehot) / N``.
    """

    def forward(self, inputs, y_true):
        exp_values = np.exp(inputs - np.max(inputs, axis=1, keepdims=True))
        self.output = exp_values / np.sum(exp_values, axis=1, keepdims=True)
        clipped = np.clip(self.output, 1e-7, 1 - 1e-7)
        return np.mean(-np.log(clipped[range(len(clipped)), y_true]))

    def backward(self, dvalues, y_true):
        samples = len(dvalues)
        self.dinputs = dvalues.copy()
        self.dinputs[range(samples), y_true] -= 1
        self.dinputs = self.dinputs / samples


class OptimizerAdam:
    """Adam with the book's learning-rate decay ``lr / (1 + decay * t)`` (chapter 10).

    Per step: ``pre_update_params()``, ``update_params(layer)`` for each layer, then
    ``post_update_params()``.
    """

    def __init__(self, learning_rate=0.001, decay=0.0, epsilon=1e-7, beta_1=0.9,
                 beta_2=0.999):
        self.learning_rate = learning_rate
        self.current_learning_rate = learning_rate
        self.decay, self.iterations = decay, 0
        self.epsilon, self.beta_1, self.beta_2 = epsilon, beta_1, beta_2

    def pre_update_params(self):
        if self.decay:
            self.current_learning_rate = self.learning_rate * (
                1.0 / (1.0 + self.decay * self.iterations))

    def update_params(self, layer):
        b1, b2, t = self.beta_1, self.beta_2, self.iterations + 1
        layer.weight_momentums = b1 * layer.weight_momentums + (1 - b1) * layer.dweights
        layer.bias_momentums = b1 * layer.bias_momentums + (1 - b1) * layer.dbiases
        weight_momentums_corrected = layer.weight_momentums / (1 - b1 ** t)
        bias_momentums_corrected = layer.bias_momentums / (1 - b1 ** t)
        layer.weight_cache = b2 * layer.weight_cache + (1 - b2) * layer.dweights ** 2
        layer.bias_cache = b2 * layer.bias_cache + (1 - b2) * layer.dbiases ** 2
        weight_cache_corrected = layer.weight_cache / (1 - b2 ** t)
        bias_cache_corrected = layer.bias_cache / (1 - b2 ** t)
        layer.weights += -self.current_learning_rate * weight_momentums_corrected / (
            np.sqrt(weight_cache_corrected) + self.epsilon)
        layer.biases += -self.current_learning_rate * bias_momentums_corrected / (
            np.sqrt(bias_cache_corrected) + self.epsilon)

    def post_update_params(self):
        self.iterations += 1
