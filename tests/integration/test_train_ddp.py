"""The same global batch (4) as 1 process x 4 images, 2 CPU processes (gloo DDP) x 2 images, and 1 process x
2 images x 2 accumulation steps: identical LR at every optimizer step, and the same loss curve and val mAP.

Why not bitwise: the backbone's BatchNorm normalises over each process's (or micro-batch's) 2 images instead
of 4 (SyncBatchNorm needs a GPU), and the detector normalises its loss by the positives of each forward
pass, so the averaged gradient differs from the full-batch one. Tolerances, from measurements on this
data: per-step loss within 5% relative (measured <= 2.1%); the weight update after 8 steps points the same
way (cosine > 0.95; measured 0.98); val mAP within 0.05 absolute (it is still near 0 after 8 steps from
scratch, so this only rules out a broken distributed evaluation; the two checks above are the strict ones).
"""
from __future__ import annotations

import pytest
import torch

from train_runs import TINY, assert_ok, final_weights, run_training, scalars, train_command

pytestmark = pytest.mark.slow
LOSS_RTOL = 0.05
MAP_ATOL = 0.05
MIN_UPDATE_COSINE = 0.95
# The mAP tolerance needs the 8 steps to stay before the steep start of learning (measured mAP 0.002-0.008 here).
# At the defaults from random weights (full LR on the backbone, a 1-step warmup in an 8-step run) they reach it,
# and the 2-image BatchNorm statistics of a micro-batch alone then move the mAP by ~0.09 (0.094 vs 0.009).
SLOW_START = ("training.backbone_lr_factor=0.1", "training.learning_rate=0.005")


@pytest.fixture(scope="module")
def runs(sample_dataset_dir, tmp_path_factory):
    layouts = {
        "1x4": ((), 1),
        "2x2": (("training.batch_size=2",), 2),
        "1x2x2": (("training.batch_size=2", "training.gradient_accumulation_steps=2"), 1),
    }
    run_dirs = {}
    for name, (overrides, processes) in layouts.items():
        run_dir = tmp_path_factory.mktemp(f"ddp_{name}")
        assert_ok(run_training(train_command(sample_dataset_dir, run_dir, *SLOW_START, *overrides,
                                             processes=processes)))
        run_dirs[name] = run_dir
    return run_dirs


def test_two_processes_really_trained_together(runs):
    log = (runs["2x2"] / "train.log").read_text()
    assert "processes 2 x batch 2 x accumulation 1 = global batch 4" in log
    assert (runs["2x2"] / "checkpoints" / "last" / "random_states_1.pkl").is_file()
    # Rank 1 wrote nothing of its own: one run directory, one train.log, no Hydra snapshot elsewhere.
    assert "processes 1" not in log


@pytest.mark.parametrize("layout", ["2x2", "1x2x2"])
def test_lr_identical_at_every_optimizer_step(runs, layout):
    reference = scalars(runs["1x4"], "train/lr")
    assert len(reference) == 8
    assert scalars(runs[layout], "train/lr") == reference


@pytest.mark.parametrize("layout", ["2x2", "1x2x2"])
def test_same_loss_curve_and_map(runs, layout):
    reference, other = scalars(runs["1x4"], "train/loss"), scalars(runs[layout], "train/loss")
    assert [s for s, _ in other] == [s for s, _ in reference]
    for (step, expected), (_, got) in zip(reference, other):
        assert got == pytest.approx(expected, rel=LOSS_RTOL), f"step {step}"
    final_map = [scalars(runs[name], "val/mAP")[-1][1] for name in ("1x4", layout)]
    assert final_map[1] == pytest.approx(final_map[0], abs=MAP_ATOL)


def _initial_weights():
    """The engine seeds with ``seed`` right before building the model: the same start for every layout."""
    from accelerate.utils import set_seed
    from trainer.models import build_model

    model_cfg = {"name": "custom_detector", "weights": None, "weights_backbone": None}
    model_cfg.update({a.split("=")[0].removeprefix("model."): int(a.split("=")[1])
                      for a in TINY if a.startswith("model.") and a.split("=")[1].isdigit()})
    set_seed(int(next(a for a in TINY if a.startswith("seed=")).split("=")[1]))
    return {f"model.{k}": v for k, v in build_model(model_cfg, num_classes=3).state_dict().items()}


@pytest.mark.parametrize("layout", ["2x2", "1x2x2"])
def test_weight_update_points_the_same_way(runs, layout):
    initial = _initial_weights()
    reference, other = final_weights(runs["1x4"]), final_weights(runs[layout])
    names = [k for k in initial if initial[k].dtype.is_floating_point and "running_" not in k]
    update_ref = torch.cat([(reference[k] - initial[k]).flatten() for k in names])
    update_other = torch.cat([(other[k] - initial[k]).flatten() for k in names])
    assert update_ref.norm() > 0
    cosine = torch.nn.functional.cosine_similarity(update_ref, update_other, dim=0).item()
    assert cosine > MIN_UPDATE_COSINE, cosine
