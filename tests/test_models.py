"""Shape and size checks for the models package."""

import pytest
import torch

from models import DigitsNet, resnet20, resnet32, resnet44, resnet56, resnet110, torchvision_model, vgg16
from models.cifar_resnet import CifarResNet


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny batches gain nothing from intra-op threads and slow down on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet20_has_027m_parameters():
    count = n_params(resnet20())
    assert count == 269_722
    assert round(count / 1e6, 2) == 0.27


@torch.no_grad()
@pytest.mark.parametrize("ctor", [resnet20, resnet32, resnet44, resnet56, resnet110])
def test_cifar_resnet_output_shape(ctor):
    model = ctor().eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", [21, 4, 0])
def test_cifar_resnet_bad_depth(depth):
    with pytest.raises(ValueError, match=str(depth)):
        CifarResNet(depth)


@torch.no_grad()
def test_vgg16_output_shape():
    model = vgg16().eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@torch.no_grad()
def test_digitsnet_output_shape_and_compressible_layer():
    model = DigitsNet().eval()
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert max(p.numel() for p in model.parameters()) >= 100_000


@torch.no_grad()
def test_torchvision_model():
    model = torchvision_model("resnet18", num_classes=10).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_torchvision_model_unknown_name():
    with pytest.raises(ValueError, match="nope"):
        torchvision_model("nope")
