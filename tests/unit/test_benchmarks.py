"""Smoke tests of the benchmark scripts on the tiniest settings: structure of the tables and JSON, no timings."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import learn, run


def _run(tmp_path, suite: str) -> tuple[dict, str]:
    out = tmp_path / "results"
    report = run.main([f"suite={suite}", "quick=true", "models=[custom_detector]", f"out={out}"])
    saved = json.loads((out / "latest.json").read_text())
    assert saved["suites"].keys() == report["suites"].keys() == set(suite.split(","))
    return saved, (out / "latest.md").read_text()


def test_suite_selection():
    assert run.select_suites("cpu") == list(run.CPU_SUITES)
    assert run.select_suites("all") == [*run.CPU_SUITES, "gpu"]
    assert run.select_suites("eval, train") == ["eval", "train"]
    with pytest.raises(SystemExit, match="suite='nope'"):
        run.select_suites("nope")


def test_unknown_option_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown option"):
        run.main(["suit=cpu", f"out={tmp_path}"])


def test_train_data_eval_suites(tmp_path):
    saved, markdown = _run(tmp_path, "train,data,eval")
    (row,) = saved["suites"]["train"]["rows"]
    assert row["model"] == "custom_detector" and row["ours_img_s"] > 0 and row["bare_img_s"] > 0
    assert row["ratio"] == pytest.approx(row["ours_img_s"] / row["bare_img_s"])
    data = saved["suites"]["data"]
    assert set(data["loader_img_s"]) == {"0", "1"} and set(data["decode_img_s"]) == {"torchvision.io", "PIL"}
    evaluation = saved["suites"]["eval"]
    # Same predictions, same ground truth: the two evaluators must agree on every COCO stat.
    assert evaluation["identical_stats"] and evaluation["max_stat_difference"] < 1e-9
    assert evaluation["images"] == 20 and evaluation["detections"] == 20 * 100
    for title in ("1. Training overhead", "2. Data pipeline", "3. Evaluation"):
        assert f"## {title}" in markdown
    assert "| custom_detector | 2 |" in markdown
    assert saved["machine"]["cpu_cores_available"] >= 1


def test_inference_suite(tmp_path):
    saved, markdown = _run(tmp_path, "infer")
    (row,) = saved["suites"]["infer"]["rows"]
    assert set(row["latency_ms"]) == {"pytorch", "ort_fp32", "ort_int8"}
    assert all(value > 0 for value in row["latency_ms"].values())
    assert row["int8_error"] is None
    assert "| custom_detector |" in markdown


@pytest.mark.slow
def test_scaling_memory_and_gpu_suites(tmp_path):
    saved, markdown = _run(tmp_path, "scaling,memory,gpu")
    scaling = saved["suites"]["scaling"]
    assert [r["processes"] for r in scaling["train"]] == [1, 2]
    # One checkpoint evaluated by 1 and by 2 processes: the merge by image id makes the stats equal.
    assert scaling["eval_stats_identical"]
    rows = saved["suites"]["memory"]["rows"]
    assert [(r["model"], r["mode"]) for r in rows] == [("custom_detector", "train"), ("custom_detector", "eval")]
    assert all(r["peak_mb"] >= r["baseline_mb"] > 0 for r in rows)
    gpu = saved["suites"]["gpu"]
    if not torch.cuda.is_available():
        assert gpu == {"measured": False, "reason": gpu["reason"], "suite_wall_s": gpu["suite_wall_s"]}
        assert "**No GPU was measured" in markdown


@pytest.mark.slow
def test_learn_sample_check_writes_report(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # recorded with the command: the thread count changes the numbers
    report = learn.main(["check=sample", "sample_images=12", "sample_epochs=1", "num_workers=0",
                         "sample_overrides=[model.min_size=64,model.max_size=96,training.batch_size=4]",
                         f"out={tmp_path}"])
    sample = json.loads((tmp_path / "learn.json").read_text())["sample"]
    assert sample == report["sample"]
    assert sample["model"] == "custom_detector" and sample["epochs"] == 1 and sample["cpu_s"] > 0
    assert set(sample["per_class"]) == {"circle", "square", "triangle"}
    assert sample["reached"] == (sample["AP50"] is not None and sample["AP50"] >= 0.9)
    markdown = (tmp_path / "learn.md").read_text()
    assert "custom_detector on the built-in sample data" in markdown
    assert "with `OMP_NUM_THREADS=2 python benchmarks/learn.py check=sample " in markdown


def test_learn_engine_lr_matches_the_reference_lr():
    from omegaconf import OmegaConf

    options = OmegaConf.create(learn.DEFAULTS)
    # base_batch_size 16, batch 4: 0.04 x 4 / 16 = the reference's 0.01.
    assert learn.engine_lr_overrides(options) == ["training.learning_rate=0.04"]
    assert learn.engine_lr_overrides(OmegaConf.merge(options, {"batch_size": 8})) == ["training.learning_rate=0.02"]
    assert learn.engine_lr_overrides(OmegaConf.merge(options, {"match_lr": False})) == []


def test_learn_means_over_seeds():
    def result(ap, ap50, cpu):
        return {"mAP": ap, "AP50": ap50, "cpu_s": cpu, "wall_s": 2 * cpu,
                "per_class": {"a": {"AP": ap, "AP50": ap50}, "b": {"AP": None, "AP50": None}}}

    mean = learn.mean_result([result(0.1, 0.3, 10), result(0.2, None, 30)])
    assert mean["mAP"] == pytest.approx(0.15) and mean["AP50"] == pytest.approx(0.15)  # no AP counts as 0
    assert mean["per_class"] == {"a": {"AP": pytest.approx(0.15), "AP50": pytest.approx(0.15)},
                                 "b": {"AP": 0.0, "AP50": 0.0}}
    assert (mean["cpu_s"], mean["wall_s"]) == (pytest.approx(20), pytest.approx(40))


@pytest.mark.slow
def test_learn_bccd_check_runs_both_loops_per_seed(tmp_path, bccd_dir):
    assert learn.BCCD_DIR == bccd_dir  # the check reads BCCD in place (the fixture skips when it is missing)
    learn.main(["check=bccd", "bccd_models=[custom_detector]", "bccd_epochs={custom_detector: 1}", "seeds=[1]",
                "batch_size=8", "num_workers=0", f"out={tmp_path}"])
    (row,) = json.loads((tmp_path / "learn.json").read_text())["bccd"]
    assert row["model"] == "custom_detector" and row["ours_overrides"] == ["training.learning_rate=0.02"]
    (run,) = row["runs"]
    assert run["seed"] == 1 and run["ours"]["status"] == "completed"
    for side in ("ours", "reference"):
        assert set(run[side]["per_class"]) == {"Platelets", "RBC", "WBC"} and run[side]["cpu_s"] > 0
        assert row[side]["mAP"] == pytest.approx(run[side]["mAP"] or 0.0)  # the mean of one seed
    markdown = (tmp_path / "learn.md").read_text()
    assert "| ours (engine defaults, `training.learning_rate=0.02`) |" in markdown
    assert "per seed, ours vs reference val mAP: seed 1:" in markdown
    assert "## custom_detector from random weights on BCCD, 1 epoch of the train split, batch 8" in markdown
