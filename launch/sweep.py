"""Expands a sweep file into train commands.

    python launch/sweep.py configs/sweeps/paper_ablations.py                 # print the commands
    python launch/sweep.py configs/sweeps/paper_ablations.py --run            # run them one after another
    python launch/sweep.py configs/sweeps/paper_ablations.py --slurm          # sbatch each on launch/slurm_gpu.sbatch
"""
import argparse
import importlib.util
import pathlib
import shlex
import subprocess
import sys


def commands(sweep_file: str, workroot: str, slurm: bool) -> list[list[str]]:
    spec = importlib.util.spec_from_file_location("sweep", sweep_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = []
    for config, args in mod.get_sweep():
        name = pathlib.Path(config).stem + "_" + "_".join(a.split("=")[1] for a in args.split(",") if a.startswith("variant="))
        workdir = f"{workroot}/{name}"
        if slurm:
            out.append(["sbatch", "launch/slurm_gpu.sbatch", f"{config}:{args}", workdir])
        else:
            out.append([sys.executable, "-m", "lrpo_jax.train", "--config", f"{config}:{args}", "--workdir", workdir])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    ap.add_argument("--workroot", default="runs")
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--slurm", action="store_true")
    a = ap.parse_args()
    for cmd in commands(a.sweep, a.workroot, a.slurm):
        print(shlex.join(cmd), flush=True)
        if a.run or a.slurm:
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
