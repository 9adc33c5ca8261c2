"""Paper run: LRPO on Qwen2.5-1.5B-Instruct (warm-started), reference hyper-parameters (lrpo_reference.md §4).

    python -m lrpo_jax.train --config configs/lrpo_qwen2_5_1_5b.py:model_dir=/path/to/hf_folder,data=/path/train.parquet --workdir runs/lrpo_qwen2_5_1_5b
    python -m lrpo_jax.train --config configs/lrpo_qwen2_5_1_5b.py:variant=grpo,model_dir=...,data=... --workdir runs/lrpo_qwen2_5_1_5b_grpo
    sbatch launch/slurm_gpu.sbatch configs/lrpo_qwen2_5_1_5b.py:model_dir=...,data=... /shared/runs/lrpo_qwen2_5_1_5b     # 8 GPUs

Shared settings (batch, optimiser, precision, data), variants and ',runlocal': configs/lrpo_paper.py.
"""
from lrpo_jax import config_lib

paper = config_lib.load_sibling(__file__, "lrpo_paper")
VARIANTS = tuple(f"variant={v}" for v in paper.VARIANTS)


def get_config(arg=None):
    return paper.get_paper_config(arg, model_dir_default="checkpoints/qwen2.5-1.5b-warmstart")
