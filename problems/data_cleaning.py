"""Hyper-data cleaning (paper App. E.1): learn per-sample weights clip(v_i,0,1) of a label-corrupted MNIST training set."""

import numpy as np
import torch

from pinnctl.classification import ClassificationProblem, cleaning_problem, corrupt_labels
from pinnctl.data import load


def make(dataset: str = "mnist", n_train: int = 50000, n_val: int = 5000, corruption: float = 0.5,
         lam: float = 1e-4, batch_size: int = 1024, data_dir: str = "") -> ClassificationProblem:
    def build(seed: int, device: str = "cpu"):
        x, y = load(dataset, "train", data_dir or None)
        x_test, y_test = load(dataset, "test", data_dir or None)
        perm = np.random.default_rng(seed).permutation(len(x))
        tr, va = perm[:n_train], perm[n_train:n_train + n_val]
        y_noisy, flipped = corrupt_labels(y[tr], corruption, seed)
        def t(a):  # the data go straight to the run's device
            return torch.as_tensor(a, device=device)

        return cleaning_problem(t(x[tr]), t(y_noisy), t(x[va]), t(y[va]), lam=lam, batch_size=batch_size,
                                x_test=t(x_test), y_test=t(y_test), seed=seed,
                                info={"dataset": dataset, "corrupted_fraction": float(flipped.mean())})

    return ClassificationProblem(
        name="data_cleaning", description=__doc__, build=build,
        params={"dataset": dataset, "n_train": n_train, "n_val": n_val, "corruption": corruption},
        # the paper's setup: 10 SGD inner steps (η = 0.01), outer SGD (α = 0.5), no pretraining
        defaults={"pretrain.steps": 0, "inner.steps": 10, "inner.lr": 0.01, "inner.optimizer": "sgd",
                  "outer.optimizer": "sgd", "outer.lr": 0.5, "outer.clip": 0.0, "certify_every": 0},
        preset_defaults={"quick": {"outer.steps": 300}, "paper": {"outer.steps": 1000}, "smoke": {"outer.steps": 2}},
        method_defaults={"nhgd": {"curvature": "efim", "beta": 0.8, "M": 5, "efim_floor": 2 * lam}},
    )
