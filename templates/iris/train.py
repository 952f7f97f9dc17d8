"""Iris with a DNNClassifier, as in TensorFlow's Estimator checkpoints guide, in numpy.

    python train.py train      # train params["steps"] steps from the latest checkpoint
    python train.py evaluate   # accuracy on the 30 test rows, from the latest checkpoint
    python train.py predict    # classify the guide's three new flowers

Each mode rebuilds the model from expman.toml's [params] and restores the
latest checkpoint, as every Estimator call does. The variables have the names
TensorFlow gives them (dnn/hiddenlayer_0/kernel, ..., dnn/logits/bias,
global_step) and so do Adagrad's slots (dnn/hiddenlayer_0/kernel/t_0/Adagrad).
Run it through `expman run NAME`, or on its own (checkpoints then go to a
temporary directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import expman

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SPECIES = ["setosa", "versicolor", "virginica"]


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 150 rows of iris.csv, shuffled with a fixed seed: 120 to train, 30 to test."""
    table = np.loadtxt(Path(__file__).parent / "iris.csv", delimiter=",", skiprows=1)
    order = np.random.default_rng(seed).permutation(len(table))
    table = table[order]
    features, labels = table[:, :4].astype(np.float32), table[:, 4].astype(np.int64)
    return features[:120], labels[:120], features[120:], labels[120:]


def build_model(params: dict) -> dict[str, np.ndarray]:
    """Variables and Adagrad slots of DNNClassifier(hidden_units, n_classes=3)."""
    rng = np.random.default_rng(params["seed"])
    sizes = [len(FEATURES), *params["model"]["hidden_units"], len(SPECIES)]
    names = [f"dnn/hiddenlayer_{i}" for i in range(len(sizes) - 2)] + ["dnn/logits"]
    state: dict[str, np.ndarray] = {}
    for name, fan_in, fan_out in zip(names, sizes, sizes[1:], strict=False):
        limit = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform, TensorFlow's default
        state[f"{name}/kernel"] = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        state[f"{name}/bias"] = np.zeros(fan_out, np.float32)
    for name in list(state):
        state[f"{name}/t_0/Adagrad"] = np.full_like(state[name], params["initial_accumulator"])
    state["global_step"] = np.int64(0)
    return state


def layers(state: dict[str, np.ndarray]) -> list[str]:
    hidden = sorted(
        {
            k.rsplit("/", 1)[0]
            for k in state
            if k.startswith("dnn/hiddenlayer_") and k.endswith("/kernel")
        },
        key=lambda name: int(name.rsplit("_", 1)[1]),
    )
    return [*hidden, "dnn/logits"]


def forward(state: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    activations = [x]
    for name in layers(state)[:-1]:
        x = np.maximum(x @ state[f"{name}/kernel"] + state[f"{name}/bias"], 0.0)  # ReLU
        activations.append(x)
    logits = x @ state["dnn/logits/kernel"] + state["dnn/logits/bias"]
    return logits, activations


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def train_step(state: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float) -> float:
    """One Adagrad step on softmax cross-entropy; returns the batch loss."""
    logits, activations = forward(state, x)
    probabilities = softmax(logits)
    loss = float(-np.log(probabilities[np.arange(len(y)), y] + 1e-12).mean())
    grad = probabilities
    grad[np.arange(len(y)), y] -= 1.0
    grad /= len(y)
    for name, inputs in reversed(list(zip(layers(state), activations, strict=True))):
        kernel = state[f"{name}/kernel"]
        gradients = {f"{name}/kernel": inputs.T @ grad, f"{name}/bias": grad.sum(axis=0)}
        grad = (grad @ kernel.T) * (inputs > 0)
        for variable, gradient in gradients.items():
            slot = state[f"{variable}/t_0/Adagrad"]
            slot += gradient**2
            state[variable] -= (lr * gradient / np.sqrt(slot)).astype(np.float32)
    state["global_step"] += 1
    return loss


def accuracy(state: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float((forward(state, x)[0].argmax(axis=1) == y).mean())


def main(mode: str) -> None:
    params = expman.params()
    train_x, train_y, test_x, test_y = load_data(params["seed"])
    state = build_model(params)
    ckpts = expman.CheckpointManager(model_config=params["model"])
    start = ckpts.restore_latest(into=state)
    print(f"restored step {start}" if start else "no checkpoint: starting from step 0")
    if mode == "train":
        batches = np.random.default_rng(params["seed"] + start)
        for step in range(start, start + params["steps"]):
            batch = batches.choice(len(train_x), params["batch_size"], replace=False)
            loss = train_step(state, train_x[batch], train_y[batch], params["learning_rate"])
            if (step + 1) % 100 == 0 or step == start:
                print(f"loss = {loss:.4f}, step = {step + 1}")
            expman.log_metrics(step + 1, loss=loss)
            ckpts.save(step + 1, state, metrics={"loss": loss})
        test_accuracy = accuracy(state, test_x, test_y)
        expman.log_metrics(int(state["global_step"]), accuracy=test_accuracy)
        ckpts.close()
        print(f"trained to step {int(state['global_step'])}: test accuracy {test_accuracy:.3f}")
        print(f"checkpoints in {ckpts.directory}")
    elif mode == "evaluate":
        result = accuracy(state, test_x, test_y)
        expman.log_metrics(start, accuracy=result)
        print(f"evaluation at step {start}: accuracy {result:.3f} on {len(test_y)} test rows")
    elif mode == "predict":
        # The guide's three new flowers.
        new = np.array(
            [[5.1, 3.3, 1.7, 0.5], [5.9, 3.0, 4.2, 1.5], [6.9, 3.1, 5.4, 2.1]], np.float32
        )
        for row, p in zip(new, softmax(forward(state, new)[0]), strict=True):
            flower = ", ".join(f"{value:.1f}" for value in row)
            print(f"[{flower}] -> {SPECIES[int(p.argmax())]} ({100 * p.max():.1f}%)")
    else:
        raise SystemExit(f"unknown mode {mode!r}: use train, evaluate or predict")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "train")
