"""The CUDA path: geometry, a bf16 step's host syncs, fp16 with a grad scaler, the CLI end to end
on the GPU and back on the CPU, and --compile. Skipped, with the reason, where torch sees no CUDA
GPU (CI has none); benchmarks/gpu_check.sh runs it on one."""
import json
import warnings

import pytest
import torch

import jepa3d
from conftest import SMALL_FLAGS
from test_cli import jepa3d as cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU on this machine")
CUDA = torch.device("cuda")


def run_cli(*args) -> dict:
    """A jepa3d command (test_cli's runner) -> its JSON result."""
    return json.loads(cli(*args).stdout)


def test_geometry_on_the_gpu_equals_the_cpu():
    xyz = torch.rand(8, 2048, 3, generator=torch.Generator().manual_seed(0))
    on_cpu = jepa3d.farthest_point_sample(xyz, 256)                          # two-level argmax
    on_gpu = jepa3d.farthest_point_sample(xyz.to(CUDA), 256)                 # flat argmax
    assert torch.equal(on_gpu.cpu(), on_cpu)
    centres = jepa3d.gather(xyz, on_cpu[:, :64])
    near_cpu = jepa3d.knn(centres, xyz, 32).sort(-1).values
    near_gpu = jepa3d.knn(centres.to(CUDA), xyz.to(CUDA), 32, sorted=False).sort(-1).values
    assert torch.equal(near_gpu.cpu(), near_cpu)


def sync_warnings(fn) -> list[str]:
    """The host syncs fn makes, as torch's sync debug mode reports them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "synchroniz" in str(w.message)]


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_a_bf16_step_syncs_the_host_once(preset):
    cfg, tcfg = jepa3d.make_configs(preset)
    model = jepa3d.JEPA(cfg).to(CUDA).train()
    opt = jepa3d.make_optimizer(model, tcfg)
    points = torch.rand(16, 2048, 3, device=CUDA)
    g = torch.Generator(device=CUDA)

    def step():
        g.manual_seed(1)
        x = jepa3d.fit_points(points, cfg.num_points, g)
        return jepa3d.train_step(model, opt, None, x, g, lr=1e-4, momentum=0.996, grad_clip=10.0,
                                 amp_dtype=torch.bfloat16)
    step()  # first calls initialise kernels and the optimizer state
    syncs = sync_warnings(step)
    # the one the shapes need: the context size Nc, the smallest in the batch
    assert len(syncs) <= 1, syncs
    out = step()
    assert torch.isfinite(out["loss"]) and out["loss"].device.type == CUDA.type


def test_fp16_step_on_the_gpu_uses_the_grad_scaler(configs):
    cfg, tcfg = configs
    model = jepa3d.JEPA(cfg).to(CUDA).train()
    opt = jepa3d.make_optimizer(model, tcfg)
    scaler = torch.amp.GradScaler("cuda")
    g = torch.Generator(device=CUDA).manual_seed(0)
    for _ in range(3):
        out = jepa3d.train_step(model, opt, scaler, torch.rand(8, 128, 3, device=CUDA), g, lr=1e-3,
                                momentum=0.99, grad_clip=1.0, amp_dtype=torch.float16)
    assert torch.isfinite(out["loss"]) and scaler.get_scale() > 0


def test_cli_pretrains_on_the_gpu_and_its_checkpoint_serves_the_cpu(tmp_path):
    out = tmp_path / "run"
    result = run_cli("--device", "cuda", "--precision", "bf16", "pretrain", "--preset", "tiny", *SMALL_FLAGS,
                     "--epochs", "1", "--max-steps", "12", "--out", out, "--log-every", "4")
    assert result["step"] == 12 and result["final_loss"] == result["final_loss"]  # not NaN
    info = json.loads((out / "run.json").read_text())
    assert info["device"].startswith("cuda") and info["precision"] == "torch.bfloat16"
    resumed = run_cli("--device", "cuda", "pretrain", "--out", out, "--resume", "--max-steps", "16")
    assert resumed["step"] == 16
    probe = run_cli("--device", "cpu", "linear-probe", "--checkpoint", out / "checkpoint.safetensors",
                    *SMALL_FLAGS[:6], "--out", tmp_path / "lp")
    assert probe["svc"]["accuracy"] > 50  # 12 classes: chance is 8.3


def test_compiled_pretraining_runs_and_keeps_its_state_dict_keys(tmp_path):
    out = tmp_path / "run"
    result = run_cli("--device", "cuda", "pretrain", "--preset", "tiny", *SMALL_FLAGS, "--epochs", "1",
                     "--max-steps", "6", "--out", out, "--compile")
    assert result["step"] == 6
    model, _, _ = jepa3d.load_jepa(out / "checkpoint.safetensors")  # plain keys: loads into an eager model
    assert isinstance(model, jepa3d.JEPA)
