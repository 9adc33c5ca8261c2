"""The paper's ablation table as one sweep: `python launch/sweep.py configs/sweeps/paper_ablations.py`.

Each entry is (config file, config args); launch/sweep.py prints one train command per entry (or
runs them in order with --run, or wraps them for SLURM with --slurm).
"""
MODEL = "model_dir=/path/to/qwen2.5-1.5b-warmstart,data=/path/to/lrpo_train.parquet"


def get_sweep():
    variants = ("lrpo", "grpo", "input_dominant", "en_dominant", "fixed", "calib_raw", "calib_quantile",
                "no_region", "no_gate", "no_anneal", "reference")
    return [("configs/lrpo_qwen2_5_1_5b.py", f"variant={v},{MODEL}") for v in variants]
