"""The main job: ``python -m funcnn`` trains the NNFS chapter-10 model on spiral data.

Dense(2,64)-ReLU-Dense(64,3) with Adam (lr 0.05, decay 5e-7, eps 1e-7, as the book),
10001 full-batch epochs on ``spiral_data(100, 3)``, from the book's own initial weights.
Before training it shows the hand-derived gradient next to ``jax.grad``'s; after, it
prints the final accuracy and writes a loss curve and a decision-boundary plot.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop, book, losses, nn, optim, train


def _plots(out: pathlib.Path, model, params, x, y, history) -> list[pathlib.Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'funcnn[viz]'): no plots written")
        return []
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history["loss"], label="loss")
    ax.plot(history["accuracy"], label="accuracy")
    ax.set(xlabel="epoch", title="spiral data, Adam (NNFS chapter 10)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=120)
    plt.close(fig)

    g = np.linspace(-1.2, 1.2, 300, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    pred = np.asarray(jnp.argmax(model.apply(params, jnp.asarray(grid)), axis=1))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.contourf(gx, gy, pred.reshape(gx.shape), levels=[-0.5, 0.5, 1.5, 2.5],
                cmap="brg", alpha=0.25)
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="brg", s=10)
    ax.set(title="decision boundary", xlim=(-1.2, 1.2), ylim=(-1.2, 1.2))
    fig.tight_layout()
    fig.savefig(out / "decision_boundary.png", dpi=120)
    plt.close(fig)
    return [out / "loss_curve.png", out / "decision_boundary.png"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m funcnn", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/spiral", help="folder for the plots")
    parser.add_argument("--epochs", type=int, default=10001)
    parser.add_argument("--engine", choices=train.ENGINES, default="backprop")
    parser.add_argument("--log-every", type=int, default=1000)
    args = parser.parse_args(argv)

    model, params, x, y = book.spiral_setup()
    print(f"model: {model}\n\n{nn.summary(params)}\n")

    # Backpropagation by hand, checked against JAX's autodiff on the first batch.
    loss = losses.softmax_cross_entropy
    hand = backprop.grad(model, loss)(params, x, y)
    auto = jax.grad(lambda p: loss(model.apply(p, x), y))(params)
    print(f"initial loss {float(loss(model.apply(params, x), y)):.7f} (NNFS: 1.0986104 "
          "for the 3-neuron chapter-5 net)")
    print("dL/dW of the output layer, first row:")
    print(f"  backprop.grad: {np.asarray(hand[2].w[0])}")
    print(f"  jax.grad:      {np.asarray(auto[2].w[0])}")
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(hand), jax.tree.leaves(auto)))
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(auto))
    print(f"  largest difference over all weights and biases: {diff / scale:.1e} of the "
          "largest gradient (float32 rounding)\n")

    opt = optim.nnfs.adam(0.05, decay=5e-7)
    state = train.init_state(model, opt, jax.random.key(0), (2,), params=params)
    t0 = time.perf_counter()
    state, history = train.fit(model, loss, opt, state, x, y, epochs=args.epochs,
                               engine=args.engine, log_every=args.log_every)
    seconds = time.perf_counter() - t0
    final = train.evaluate(model, loss, state.params, x, y)
    print(f"\nfinal accuracy {final['accuracy']:.3f}, loss {final['loss']:.3f} "
          f"({args.epochs} epochs in {seconds:.1f} s; the book: acc 0.967, loss 0.074)")
    for path in _plots(pathlib.Path(args.out), model, state.params, x, y, history):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
