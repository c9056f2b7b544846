"""Data distillation (paper App. E.2): learn n synthetic Fashion-MNIST images per class so a linear classifier trained on them fits the real data."""

import torch

from pinnctl.classification import ClassificationProblem, distillation_problem
from pinnctl.data import load


def make(dataset: str = "fashion-mnist", per_class: int = 5, lam: float = 1 / 15680, outer_batch: int = 0,
         data_dir: str = "") -> ClassificationProblem:
    def build(seed: int, device: str = "cpu"):
        x, y = load(dataset, "train", data_dir or None)
        x_test, y_test = load(dataset, "test", data_dir or None)
        def t(a):  # the data go straight to the run's device
            return torch.as_tensor(a, device=device)

        return distillation_problem(t(x), t(y), t(x_test), t(y_test), per_class=per_class, lam=lam,
                                    outer_batch=outer_batch or None, seed=seed)

    return ClassificationProblem(
        name="distillation", description=__doc__, build=build,
        params={"dataset": dataset, "per_class": per_class, "lam": lam},
        # the paper's NHGD setup: inner η = 1.0 (full batch on the synthetic set), outer α = 0.01
        defaults={"pretrain.steps": 0, "inner.steps": 10, "inner.lr": 1.0, "inner.optimizer": "sgd",
                  "outer.optimizer": "adam", "outer.lr": 0.01, "outer.clip": 0.0, "certify_every": 0},
        preset_defaults={"quick": {"outer.steps": 300}, "paper": {"outer.steps": 1000}, "smoke": {"outer.steps": 2}},
        method_defaults={"nhgd": {"curvature": "efim", "beta": 0.8, "M": 1, "efim_floor": 2 * lam}},
    )
