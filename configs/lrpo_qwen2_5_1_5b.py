"""Paper run: LRPO on Qwen2.5-1.5B-Instruct (warm-started), reference hyper-parameters (lrpo_reference.md §4).

    python -m lrpo_jax.train --config configs/lrpo_qwen2_5_1_5b.py:model_dir=/path/to/hf_folder,data=/path/train.parquet --workdir runs/lrpo_qwen2_5_1_5b
    python -m lrpo_jax.train --config configs/lrpo_qwen2_5_1_5b.py:variant=grpo,model_dir=...,data=... --workdir runs/lrpo_qwen2_5_1_5b_grpo
    bash launch/slurm_gpu.sbatch configs/lrpo_qwen2_5_1_5b.py:model_dir=...,data=... /shared/runs/lrpo_qwen2_5_1_5b     # 8 GPUs

256 prompts x 8 rollouts per step, 1 Adam step (on-policy), lr 1e-6, k3 KL 0.001, bf16 compute with
fp32 master weights, FSDP over all devices; ~64 steps (4 epochs of the paper's 4,396 prompts).
Variants and ablations: see configs/lrpo_paper.py (VARIANTS). Add ',runlocal' for a 2-step tiny-batch
check of the same code path. The model folder is a local Hugging Face checkpoint (nothing is
downloaded); the data is the reference's verl parquet schema.
"""
from lrpo_jax import config_lib

paper = config_lib.load_sibling(__file__, "lrpo_paper")
VARIANTS = tuple(f"variant={v}" for v in paper.VARIANTS)


def get_config(arg=None):
    return paper.get_paper_config(arg, model_dir_default="checkpoints/qwen2.5-1.5b-warmstart")
