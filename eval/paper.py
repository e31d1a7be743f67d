"""The paper's reference rows (frozen encoder, LLaVA-NeXT, Qwen2.5; Tables 3 and 4, and the equal-budget comparison
with OpenVision2), printed beside our numbers."""

from __future__ import annotations

from eval.suites import PAPER_14

_COLS = [b.name for b in PAPER_14]

# Qwen2.5-1.5B: the 14 benchmarks in PAPER_14 order, then the reported ALL AVG
_TABLE3 = {
    "CLIP L/14": ([24.8, 23.7, 38.9, 43.9, 64.5, 30.2, 47.8, 46.1, 39.8, 75.3, 1218, 55.5, 72.5, 117.9], 53.1),
    "AIMv2 L/14": ([26.3, 25.2, 37.7, 47.2, 64.2, 29.3, 47.3, 48.1, 43.9, 76.2, 1157, 80.1, 73.6, 122.4], 55.7),
    "SigLIP L/16": ([30.2, 41.0, 47.3, 36.0, 66.4, 27.8, 47.9, 41.3, 41.7, 76.7, 1203, 84.0, 76.1, 120.7], 56.9),
    "SigLIP2 L/16": ([33.4, 45.7, 45.1, 50.3, 66.7, 28.2, 45.7, 43.1, 42.6, 76.9, 1165, 82.9, 74.6, 127.8], 58.7),
    "GenLIP L/16": ([41.2, 51.1, 51.1, 53.6, 66.6, 30.7, 51.1, 44.4, 41.5, 76.1, 1258, 82.6, 76.0, 131.4], 61.5),
    "SigLIP2 So/16": ([35.2, 47.2, 46.4, 53.3, 67.0, 28.0, 50.3, 46.5, 43.5, 77.1, 1220, 84.3, 77.1, 131.5], 60.6),
    "GenLIP So/16": ([40.8, 51.5, 51.9, 55.2, 67.2, 31.9, 52.3, 46.5, 44.0, 76.0, 1215, 87.5, 81.5, 129.5], 62.6),
    "SigLIP2 g/16": ([35.3, 47.3, 47.6, 54.7, 66.7, 29.7, 49.6, 50.1, 45.2, 76.2, 1284, 84.4, 76.2, 134.5], 61.5),
    "GenLIP g/16": ([45.0, 55.6, 57.0, 59.0, 68.9, 33.9, 53.3, 49.1, 45.5, 77.5, 1256, 88.3, 82.0, 135.4], 65.2),
}

# Qwen2.5-7B: only ALL AVG is given in the spec
PAPER_7B_ALL_AVG = {"CLIP L/14": 58.8, "AIMv2 L/14": 58.6, "SigLIP L/16": 64.5, "SigLIP2 So/16": 69.4,
                    "SigLIP2 g/16": 68.9, "GenLIP L/16": 69.0, "GenLIP So/16": 71.8, "GenLIP g/16": 73.6}


def paper_rows_1p5b() -> dict[str, dict[str, float]]:
    """``{encoder: {benchmark: value, ..., "ALL AVG (reported)": value}}`` for Qwen2.5-1.5B."""
    return {enc: {**dict(zip(_COLS, vals)), "ALL AVG (reported)": avg} for enc, (vals, avg) in _TABLE3.items()}

# The same 2B-sample pretraining budget for every encoder, So/16, frozen protocol: only ALL AVG is given
PAPER_2B_BUDGET_ALL_AVG = {"GenLIP So/16": 57.2, "OpenVision2 So/16": 55.9, "SigLIP So/16": 54.4}


def paper_all_avg_rows() -> dict[str, float]:
    """``{row label: ALL AVG}`` for the paper's rows that report only the average: Qwen2.5-7B (Table 4) and the
    equal 2B-sample budget comparison (GenLIP, OpenVision2, SigLIP)."""
    rows = {f"{enc} (Qwen2.5-7B)": v for enc, v in PAPER_7B_ALL_AVG.items()}
    rows.update({f"{enc} (2B samples each)": v for enc, v in PAPER_2B_BUDGET_ALL_AVG.items()})
    return rows
