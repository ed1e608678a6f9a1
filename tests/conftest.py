import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gmm():
    from spell_lab.models.gmm import GaussianMixture

    return GaussianMixture(num_classes=3, components=3, shape=(2, 4, 2), spread=4.0, std=0.2, seed=1)
