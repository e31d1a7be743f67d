"""Benchmark suites as data, and the paper's averaging arithmetic.

Every benchmark names its lmms-eval task, the result key it is read from, its group, and the factor that puts the raw
lmms-eval number on the paper's scale (fractions -> percent, CIDEr x 100, MME-P stays a score out of 2000). The
paper's ALL AVG is the unweighted mean of a suite's benchmarks on that scale, except that MME-P counts as
``MME-P / 2000 * 100``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    name: str  # as printed in the paper's tables
    task: str  # lmms-eval task name
    metric: str  # lmms-eval result key (``metric,filter``)
    group: str
    scale: float = 100.0  # raw lmms-eval value -> the paper's number
    avg_divisor: float = 1.0  # the paper's number -> its contribution to averages (MME-P: / 20)

    def paper_value(self, raw: float) -> float:
        return raw * self.scale

    def avg_value(self, paper: float) -> float:
        return paper / self.avg_divisor


DOC, VQA, CAP, GEN = "Doc&OCR", "General VQA", "Caption", "General"

PAPER_14 = (
    Benchmark("ChartQA", "chartqa", "relaxed_overall,none", DOC),
    Benchmark("OCRBench", "ocrbench", "ocrbench_accuracy,none", DOC),
    Benchmark("DocVQA", "docvqa_val", "anls,none", DOC),
    Benchmark("TextVQA", "textvqa_val", "exact_match,none", DOC),
    Benchmark("AI2D", "ai2d", "exact_match,flexible-extract", DOC),
    Benchmark("InfoVQA", "infovqa_val", "anls,none", DOC),
    Benchmark("SEED2+", "seedbench_2_plus", "seedbench_2_plus_all,none", DOC),
    Benchmark("VQAv2", "vqav2_val", "exact_match,none", VQA),
    Benchmark("GQA", "gqa", "exact_match,none", VQA),
    Benchmark("SQA", "scienceqa_img", "exact_match,none", VQA),
    Benchmark("MME-P", "mme", "mme_perception_score,none", VQA, scale=1.0, avg_divisor=20.0),
    Benchmark("NoCaps", "nocaps_val", "nocaps_CIDEr,none", CAP),
    Benchmark("COCO", "coco2017_cap_val", "coco_CIDEr,none", CAP),
    Benchmark("TextCaps", "textcaps_val", "textcaps_CIDEr,none", CAP),
)

# Cambrian-1's 16, in its four groups
KNOW, OCR, VIS = "Knowledge", "OCR&Chart", "Vision-Centric"
CAMBRIAN_16 = (
    Benchmark("MME-P", "mme", "mme_perception_score,none", GEN, scale=1.0, avg_divisor=20.0),
    Benchmark("MMBench-en", "mmbench_en_dev", "gpt_eval_score,none", GEN),
    Benchmark("SEED-Image", "seedbench", "seed_image,none", GEN),
    Benchmark("GQA", "gqa", "exact_match,none", GEN),
    Benchmark("SQA", "scienceqa_img", "exact_match,none", KNOW),
    Benchmark("MMMU", "mmmu_val", "mmmu_acc,none", KNOW),
    # lmms-eval 0.7 splits mathvista_testmini into a group of three prompt variants with no aggregate; the paper's
    # one number is the format-prompt variant (what the single mathvista_testmini task of earlier lmms-eval ran)
    Benchmark("MathVista", "mathvista_testmini_format", "llm_as_judge_eval,none", KNOW),
    Benchmark("AI2D", "ai2d", "exact_match,flexible-extract", KNOW),
    Benchmark("ChartQA", "chartqa", "relaxed_overall,none", OCR),
    Benchmark("OCRBench", "ocrbench", "ocrbench_accuracy,none", OCR),
    Benchmark("TextVQA", "textvqa_val", "exact_match,none", OCR),
    Benchmark("DocVQA", "docvqa_val", "anls,none", OCR),
    Benchmark("MMVP", "mmvp", "mmvp_accuracy,none", VIS),
    Benchmark("RealWorldQA", "realworldqa", "exact_match,none", VIS),
    Benchmark("CV-Bench-2D", "cv_bench_2d", "cv_bench_acc,none", VIS),
    Benchmark("CV-Bench-3D", "cv_bench_3d", "cv_bench_acc,none", VIS),
)

UNFROZEN_12 = (
    Benchmark("ChartQA", "chartqa", "relaxed_overall,none", DOC),
    Benchmark("DocVQA", "docvqa_val", "anls,none", DOC),
    Benchmark("TextVQA", "textvqa_val", "exact_match,none", DOC),
    Benchmark("OCRBench", "ocrbench", "ocrbench_accuracy,none", DOC),
    # lmms-eval 0.7 holds LiveXiv as a group of six monthly snapshots with no aggregate; the paper does not say which
    # it used: the newest (v6) is read, one task and one score (change it here to compare with another snapshot)
    Benchmark("LiveXivVQA", "livexiv_vqa_v6", "livexiv_vqa,none", DOC),
    Benchmark("AI2D", "ai2d", "exact_match,flexible-extract", DOC),
    Benchmark("MMBench", "mmbench_en_dev", "gpt_eval_score,none", GEN),
    Benchmark("MME-C", "mme", "mme_cognition_score,none", GEN, scale=1.0, avg_divisor=8.0),
    Benchmark("MME-P", "mme", "mme_perception_score,none", GEN, scale=1.0, avg_divisor=20.0),
    Benchmark("POPE", "pope", "pope_accuracy,none", GEN),
    Benchmark("RealWorldQA", "realworldqa", "exact_match,none", GEN),
    Benchmark("MMStar", "mmstar", "average,none", GEN),
)

# the generated offline benchmarks (eval/synth_bench.py), same metrics as the tasks they include
SYNTH_3 = (
    Benchmark("SynthDoc", "genlip_synth_docvqa", "anls,none", DOC),
    Benchmark("SynthChart", "genlip_synth_chartqa", "relaxed_overall,none", DOC),
    Benchmark("SynthCap", "genlip_synth_caption", "coco_CIDEr,none", CAP),
)

SUITES: dict[str, tuple[Benchmark, ...]] = {"paper14": PAPER_14, "cambrian16": CAMBRIAN_16, "unfrozen12": UNFROZEN_12,
                                            "synth": SYNTH_3}


def averages(suite: tuple[Benchmark, ...], paper_values: dict[str, float]) -> dict[str, float]:
    """Group averages and ``ALL AVG`` from the paper-scale values of a suite (keys: benchmark names).

    >>> row = dict(zip([b.name for b in PAPER_14], [41.2, 51.1, 51.1, 53.6, 66.6, 30.7, 51.1, 44.4, 41.5, 76.1,
    ...                                              1258, 82.6, 76.0, 131.4]))
    >>> f'{averages(PAPER_14, row)["ALL AVG"]:.2f}'  # GenLIP L/16, Qwen2.5-1.5B (paper Table 3: 61.5)
    '61.45'
    """
    missing = [b.name for b in suite if b.name not in paper_values]
    if missing:
        raise KeyError(f"no score for {missing}")
    out: dict[str, float] = {}
    groups: dict[str, list[float]] = {}
    for b in suite:
        groups.setdefault(b.group, []).append(b.avg_value(paper_values[b.name]))
    for g, vals in groups.items():
        out[g] = sum(vals) / len(vals)
    allv = [b.avg_value(paper_values[b.name]) for b in suite]
    out["ALL AVG"] = sum(allv) / len(allv)
    return out
