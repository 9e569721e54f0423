"""student.pretrained_file / teacher.pretrained_file: weights from another task, adapted and reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from gpd.cli.main import main
from gpd.data import locate
from gpd.models import create_model
from gpd.training.pretrained import load_pretrained_file

pytestmark = pytest.mark.usefixtures("torch_single_thread")
needs_fashion_mnist = pytest.mark.skipif(
    not (locate.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (make test installs it)",
)


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision ResNet-18 state_dict for 1000 classes and 3 channels, as a user has on disk."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18_imagenet.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "ddp_prefixed"])
def test_head_reinitialised_and_input_channels_adapted(fmt: str, imagenet_resnet18, tmp_path: Path) -> None:
    path, state = imagenet_resnet18
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif fmt == "ddp_prefixed":
        path = tmp_path / "w.pth"
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    model = create_model("tv:resnet18", num_classes=10, in_chans=1)
    fresh_head = model.fc.weight.detach().clone()
    line = load_pretrained_file(model, path, "student.pretrained_file")
    assert "adapted conv1.weight (3 -> 1 input channels" in line
    assert "re-initialised the classifier fc.weight (1000, 512) -> (10, 512), fc.bias" in line
    assert torch.equal(model.conv1.weight, adapt_input_conv(1, state["conv1.weight"]))
    assert torch.allclose(model.conv1.weight[:, 0], state["conv1.weight"].sum(1), atol=1e-6)  # 3 -> 1 channel: the sum
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])
    assert torch.equal(model.fc.weight, fresh_head)


@needs_fashion_mnist
def test_fine_tune_imagenet_weights_on_fashion_mnist(imagenet_resnet18, tmp_path: Path, capsys) -> None:
    path, _ = imagenet_resnet18
    run = tmp_path / "run"
    args = ["train", "model.student=tv:resnet18", f"student.pretrained_file={path}", "data.train_subset=256",
            "data.test_subset=256", "train.epochs=1", f"output_dir={run}"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    report = [line for line in out.splitlines() if line.startswith("student.pretrained_file:")]
    assert len(report) == 1 and "adapted conv1.weight" in report[0] and "re-initialised the classifier fc" in report[0]
    assert (run / "student.pt").is_file()


def test_the_teacher_takes_a_pretrained_file_too(imagenet_resnet18, tmp_path: Path, capsys) -> None:
    path, _ = imagenet_resnet18
    args = ["train", "fashion_mnist/kd", "teacher.model=tv:resnet18", "teacher.checkpoint=null",
            f"teacher.pretrained_file={path}", "--dry-run"]  # fmt: skip
    assert main(args) == 0
    assert "teacher.pretrained_file: loaded" in capsys.readouterr().out
