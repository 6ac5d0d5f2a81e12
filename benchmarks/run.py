"""Speed and memory benchmarks: ``python benchmarks/run.py [suite=cpu] [out=benchmarks/results] [key=value ...]``.

Suites: ``train`` (engine step loop vs a bare PyTorch loop), ``data`` (loader and decoders vs model consumption),
``eval`` (our COCO evaluation vs plain pycocotools), ``infer`` (onnxruntime fp32/int8 vs PyTorch eager),
``scaling`` (1 vs 2 CPU processes), ``memory`` (peak RSS), ``gpu`` (images/s per GPU, mixed precision off/on; says
so plainly when there is no GPU). ``suite=cpu`` runs all but ``gpu``; ``suite=all`` runs everything; a comma list
(``suite=train,eval``) runs those. Every speed figure is a ratio of two measurements interleaved in one run.

Writes ``OUT/latest.md`` (tables) and ``OUT/latest.json`` (every number, the machine, the settings).
``quick=true`` shrinks every suite to a smoke test (numbers meaningless, structure identical).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``trainer`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf

from benchmarks import data_pipeline, evaluation, inference, memory, scaling, training
from benchmarks.common import REPO_ROOT, machine

CPU_SUITES = ("train", "data", "eval", "infer", "scaling", "memory")
ALL_SUITES = (*CPU_SUITES, "gpu")
TITLES = {
    "train": "1. Training overhead: engine step loop vs bare PyTorch loop (one process, same threads)",
    "data": "2. Data pipeline: training loader vs model consumption; decoders",
    "eval": "3. Evaluation: our COCO evaluation vs plain pycocotools on the same predictions",
    "infer": "4. Inference latency: onnxruntime vs PyTorch eager; int8 vs fp32",
    "scaling": "5. Scaling: 1 vs 2 CPU processes",
    "gpu": "5b. GPU: images/s per GPU, mixed precision off and on",
    "memory": "6. Memory: peak RSS at the default batch size",
}
DEFAULTS = {
    "suite": "cpu",
    "out": str(REPO_ROOT / "benchmarks" / "results"),
    "models": ["custom_detector", "ssdlite", "faster_rcnn_320"],
    "quick": False,
    "mixed_precision": "no",   # suite=train only (the gpu suite runs it once per setting)
}


def select_suites(value: str) -> list[str]:
    if value == "cpu":
        return list(CPU_SUITES)
    if value == "all":
        return list(ALL_SUITES)
    names = [name.strip() for name in str(value).split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_SUITES]
    if unknown or not names:
        raise SystemExit(f"suite={value!r}: choose cpu, all, or a comma list of {', '.join(ALL_SUITES)}")
    return names


def settings_for(quick: bool, mixed_precision: str) -> dict:
    if quick:
        return {"train": training.Settings(steps=1, repeats=1, min_seconds=0, batch_size=2, image_size=(128, 96),
                                           mixed_precision=mixed_precision),
                "data": data_pipeline.DataSettings(num_images=4, batch_size=2, workers=(0, 1), decode_images=4,
                                                   repeats=1, consumer_image_size=(128, 96)),
                "eval": evaluation.EvalSettings(max_images=20, repeats=1),
                "infer": inference.InferenceSettings(repeats=1, min_seconds=0.0, calibration_images=2),
                "scaling": scaling.ScalingSettings(num_images=8, global_batch=2, epochs=1),
                "memory": memory.MemorySettings(steps=1, eval_images=2)}
    return {"train": training.Settings(mixed_precision=mixed_precision), "data": data_pipeline.DataSettings(),
            "eval": evaluation.EvalSettings(), "infer": inference.InferenceSettings(),
            "scaling": scaling.ScalingSettings(), "memory": memory.MemorySettings()}


def run_suite(name: str, models: list[str], work_dir: Path, settings: dict) -> tuple[dict, str]:
    if name == "train":
        result = training.run(models, work_dir, settings["train"])
        return result, training.to_markdown(result)
    if name == "data":
        result = data_pipeline.run(work_dir, settings["data"])
        return result, data_pipeline.to_markdown(result)
    if name == "eval":
        result = evaluation.run(work_dir, settings["eval"])
        return result, evaluation.to_markdown(result)
    if name == "infer":
        result = inference.run(models, work_dir, settings["infer"])
        return result, inference.to_markdown(result)
    if name == "scaling":
        result = scaling.run(work_dir, settings["scaling"])
        return result, scaling.to_markdown(result)
    if name == "memory":
        result = memory.run(models, work_dir, settings["memory"])
        return result, memory.to_markdown(result)
    result = scaling.gpu_suite(work_dir, models)
    return result, scaling.gpu_markdown(result)


def render(report: dict, sections: dict[str, str]) -> str:
    m = report["machine"]
    header = [
        "# Benchmark results", "",
        f"Measured {report['finished']} with `{report['command']}` ({report['wall_s']:.0f} s).", "",
        f"Machine: {m['cpu']}, {m['cpu_cores_available']} CPU cores available, torch {m['torch']} with "
        f"{m['torch_threads']} threads, Python {m['python']}; "
        + (f"GPU {m['cuda']}." if m["cuda"] else "no GPU (nothing here was measured on a GPU)."),
        f"Load average at start: {', '.join(f'{v:.1f}' for v in m['load_average_at_start'] or [])} "
        "(other jobs share the cores; every ratio compares measurements interleaved in the same run).", ""]
    body = []
    for name, text in sections.items():
        body += [f"## {TITLES[name]}", "", text, ""]
    return "\n".join(header + body)


def main(argv: list[str]) -> dict:
    options = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_cli(argv))
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise SystemExit(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    suites = select_suites(str(options.suite))
    settings = settings_for(bool(options.quick), str(options.mixed_precision))
    models = list(options.models)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"command": " ".join(["python benchmarks/run.py", *argv]), "machine": machine(),
              "settings": {name: vars(value) for name, value in settings.items()}, "suites": {}}
    sections = {}
    with tempfile.TemporaryDirectory() as work_dir:
        for name in suites:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            suite_started = time.perf_counter()
            report["suites"][name], sections[name] = run_suite(name, models, Path(work_dir), settings)
            report["suites"][name]["suite_wall_s"] = time.perf_counter() - suite_started
            print(sections[name], file=sys.stderr, flush=True)
    report["wall_s"] = time.perf_counter() - started
    report["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    (out / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "latest.md").write_text(render(report, sections))
    print(f"[bench] wrote {out / 'latest.md'} and {out / 'latest.json'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
