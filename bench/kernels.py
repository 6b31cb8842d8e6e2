"""Kernel throughput: the renderer and one training step, on CPU and, when present, on CUDA.

Renderer: camera samples (pixels x samples per pixel) traced per second by ``render_frame``.
Training step: rows per second through forward, backward and AdamW for the sweep's baseline MLP
(``DEFAULT_HYPERPARAMETERS``) on as many inputs as the features have, as ``train_trial`` does.
CPU runs use one thread and every core. Without CUDA the GPU figures are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import PROJECT_ROOT, ratio, rnd

RENDER_SIZE = {"width": 320, "height": 180, "samples": 4, "n_frames": 48, "seed": 3}  # the DAG defaults
TRAIN_ROWS = 65_536


def _throughput(step, units_per_step: float, seconds: float, sync=lambda: None) -> dict:
    """Calls ``step`` until ``seconds`` have passed (after one warm-up call); units per second."""
    step()
    sync()
    calls, began = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        sync()
        elapsed = time.perf_counter() - began
        if elapsed >= seconds:
            break
    return {"calls": calls, "seconds": rnd(elapsed), "per_s": units_per_step * calls / elapsed}


def render_throughput(device: str, seconds: float) -> dict:
    import torch

    from fanout import render

    frames = iter(range(10**9))

    def step() -> None:
        render.render_frame(next(frames) % RENDER_SIZE["n_frames"], device=device, **RENDER_SIZE)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    samples = RENDER_SIZE["width"] * RENDER_SIZE["height"] * RENDER_SIZE["samples"]
    result = _throughput(step, samples, seconds, sync)
    return {
        "device": device,
        "frame": RENDER_SIZE,
        "frames": result["calls"],
        "msamples_per_s": rnd(result["per_s"] / 1e6),
        "frames_per_s": rnd(result["per_s"] / samples),
    }


def train_step_throughput(device: str, seconds: float) -> dict:
    import torch

    from fanout import train

    try:
        from fanout.preprocess import FEATURE_COLUMNS

        in_features = len(FEATURE_COLUMNS)
    except ImportError:  # the preprocessing workload is not there yet
        in_features = 23
    hp = train.DEFAULT_HYPERPARAMETERS
    arch = {k: hp[k] for k in ("hidden", "depth", "dropout", "activation")} | {"in_features": in_features}
    dev = torch.device(device)
    torch.manual_seed(0)
    model = train.build_mlp(arch).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    x = torch.randn(TRAIN_ROWS, in_features, device=dev)
    y = torch.randn(TRAIN_ROWS, device=dev)
    batch_size = hp["batch_size"]
    batches = iter(range(10**12))

    def step() -> None:
        start = (next(batches) * batch_size) % TRAIN_ROWS
        pred = model(x[start : start + batch_size]).squeeze(-1)
        loss = torch.nn.functional.mse_loss(pred, y[start : start + batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    result = _throughput(step, batch_size, seconds, sync)
    return {
        "device": device,
        "arch": arch,
        "batch_size": batch_size,
        "steps": result["calls"],
        "rows_per_s": rnd(result["per_s"], 0),
        "steps_per_s": rnd(result["per_s"] / batch_size, 1),
    }


def measure(seconds: float) -> dict:
    """Every kernel figure in this process: CPU with one thread and with every core, then CUDA."""
    import torch

    cores = torch.get_num_threads()
    section: dict = {"cores": cores, "render": {}, "train_step": {}}
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        section["render"][f"cpu_{threads}t"] = render_throughput("cpu", seconds)
        section["train_step"][f"cpu_{threads}t"] = train_step_throughput("cpu", seconds)
    torch.set_num_threads(cores)
    if torch.cuda.is_available():
        section["cuda_device"] = torch.cuda.get_device_name(0)
        for kernel, fn, unit in (
            ("render", render_throughput, "msamples_per_s"),
            ("train_step", train_step_throughput, "rows_per_s"),
        ):
            section[kernel]["cuda"] = fn("cuda", seconds)
            section[kernel]["gpu_cpu_ratio"] = rnd(
                ratio(section[kernel]["cuda"][unit], section[kernel][f"cpu_{cores}t"][unit]), 1
            )
    else:
        section["gpu"] = {
            "status": "skipped",
            "reason": "CUDA not available (torch.cuda.is_available() is False)",
        }
    return section


def run(seconds: float, policies: tuple[str, ...] = ("default", "passive")) -> dict:
    """``measure`` in fresh interpreters: as configured, and with ``OMP_WAIT_POLICY=PASSIVE``.

    OpenMP reads its wait policy once at start-up, hence one interpreter per policy. With the
    default (spinning) policy a torch thread that loses its core to another process stalls every
    other thread at the next barrier; the second run shows what that costs on a busy machine.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("OMP_WAIT_POLICY", None)
    environments = {"default": env, "passive": {**env, "OMP_WAIT_POLICY": "PASSIVE"}}
    section: dict = {}
    for name in policies:
        policy_env = environments[name]
        done = subprocess.run(
            [sys.executable, "-m", "bench.kernels", "--seconds", str(seconds)],
            env=policy_env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=PROJECT_ROOT,
        )
        if done.returncode:
            raise RuntimeError(f"kernels ({name} OpenMP wait policy) failed: {done.stderr[-800:]}")
        section[name] = json.loads(done.stdout.strip().splitlines()[-1])
    for kernel, unit in (("render", "msamples_per_s"), ("train_step", "rows_per_s")):
        # all cores vs one thread, per wait policy
        section[f"{kernel}_scaling"] = {
            name: rnd(
                ratio(
                    section[name][kernel][f"cpu_{section[name]['cores']}t"][unit],
                    section[name][kernel]["cpu_1t"][unit],
                ),
                2,
            )
            for name in policies
        }
    return section


def _scaling(section: dict, kernel: str) -> str:
    scaling = section[f"{kernel}_scaling"]
    text = f"all-core scaling {scaling['default']}x"
    if "passive" in scaling:
        text += f", with OMP_WAIT_POLICY=PASSIVE {scaling['passive']}x"
    return text


def figures(section: dict) -> list[tuple[str, str]]:
    default = section["default"]
    cores = default["cores"]
    render, train = default["render"], default["train_step"]
    rows = [
        (
            "renderer, CPU 1 thread / all cores",
            f"{render['cpu_1t']['msamples_per_s']} / {render[f'cpu_{cores}t']['msamples_per_s']} M camera samples/s "
            f"(320x180x4 frames: {render[f'cpu_{cores}t']['frames_per_s']}/s); "
            f"{_scaling(section, 'render')}",
        ),
        (
            "training step, CPU 1 thread / all cores",
            f"{train['cpu_1t']['rows_per_s']:.0f} / {train[f'cpu_{cores}t']['rows_per_s']:.0f} rows/s "
            f"(batch {train['cpu_1t']['batch_size']}); {_scaling(section, 'train_step')}",
        ),
    ]
    if "cuda" in render:
        rows.append(("renderer GPU/CPU", f"{render['gpu_cpu_ratio']}x on {default['cuda_device']}"))
        rows.append(("training step GPU/CPU", f"{train['gpu_cpu_ratio']}x"))
    else:
        rows.append(("GPU/CPU ratios", f"skipped: {default['gpu']['reason']}"))
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="kernel throughput in this interpreter, as JSON")
    parser.add_argument("--seconds", type=float, default=1.0)
    print(json.dumps(measure(parser.parse_args().seconds)))
