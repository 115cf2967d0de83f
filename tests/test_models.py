"""Every registered model runs forward and backward; parameter counts match the published ones."""
import pytest
import torch

from slimlab.errors import ConfigError, SlimlabError
from slimlab.models import create_model, list_models, load_weights

PUBLISHED_PARAMS = {  # exact counts where a reference implementation publishes them (10 classes)
    "resnet18": 11_173_962,           # kuangliu/pytorch-cifar, docs/references.md
    "resnet18_imagenet": 11_181_642,  # torchvision resnet18(num_classes=10)
    "resnet50_imagenet": 23_528_522,  # torchvision resnet50(num_classes=10)
    "lenet5": 61_706,                 # LeNet-5 on 28x28 MNIST
}
APPROX_PARAMS_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
                   "resnet34": 21.3, "resnet50": 23.5, "vgg11_bn": 9.2, "vgg16_bn": 14.7}


def _input(name):
    return torch.randn(2, 1, 28, 28) if name == "lenet5" else torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("name", list(list_models()))
def test_forward_backward_and_param_count(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1 if name == "lenet5" else 3, image_size=28 if name == "lenet5" else 32)
    out = model(_input(name))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    count = sum(p.numel() for p in model.parameters())
    if name in PUBLISHED_PARAMS:
        assert count == PUBLISHED_PARAMS[name]
    else:
        assert abs(count / 1e6 - APPROX_PARAMS_M[name]) / APPROX_PARAMS_M[name] < 0.03


def test_every_model_has_a_reference_count():
    assert set(list_models()) <= set(PUBLISHED_PARAMS) | set(APPROX_PARAMS_M)


def test_imagenet_layout_uses_torchvision_names():
    keys = set(create_model("resnet18_imagenet").state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight"):
        assert key in keys
    assert len(keys) == 122  # torchvision resnet18's state dict has 122 entries


def test_user_factory_and_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes=10, in_channels=3):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("mynet:build", num_classes=7)
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 7)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ck.pt")
    reloaded = create_model("mynet:build", num_classes=7, weights=tmp_path / "ck.pt")
    assert torch.equal(reloaded[0].weight, model[0].weight)
    with pytest.raises(SlimlabError, match="does not fit"):
        create_model("mynet:build", num_classes=3, weights=tmp_path / "ck.pt")
    with pytest.raises(ConfigError, match="no module named 'nosuchmodule'"):
        create_model("nosuchmodule:build")


MYMODELS = ("import torch.nn as nn\n"
            "def build(num_classes=10, in_channels=3):\n"
            "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(1), nn.LazyLinear(num_classes))\n")


def test_a_factory_in_the_current_folder_imports_as_python_m_would(tmp_path, monkeypatch):
    (tmp_path / "mymodels_cwd.py").write_text(MYMODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".", str(tmp_path))])
    model = create_model("mymodels_cwd:build", num_classes=5)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_a_module_that_is_not_there_says_how_to_make_it_findable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        create_model("mymodels_absent:build")
    said = str(caught.value)
    assert "\n" not in said and f"no module named 'mymodels_absent' in the current folder ({tmp_path})" in said
    assert "mymodels_absent.py" in said and "PYTHONPATH" in said


def test_a_module_whose_own_import_fails_or_lacks_the_factory_is_named(tmp_path, monkeypatch):
    (tmp_path / "mymodels_broken.py").write_text("import torchvizion\n")
    (tmp_path / "mymodels_typo.py").write_text(MYMODELS)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"module 'mymodels_broken' was found, but importing it failed: No module named "
                                          r"'torchvizion'; install 'torchvizion' or fix the import in it"):
        create_model("mymodels_broken:build")
    with pytest.raises(ConfigError, match=r"'mymodels_typo' \(.*mymodels_typo.py\) has no callable 'buidl'; its functions: build"):
        create_model("mymodels_typo:buidl")


def test_checkpoint_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(SlimlabError, match="not a state dict"):
        create_model("resnet20", weights=tmp_path / "evil.pt")


def test_a_checkpoint_that_is_no_state_dict_says_what_it_is_and_how_to_save_one(tmp_path, capsys):
    """Explore from outside: a whole pickled model gave torch's advice to set weights_only=False, in terminal colours."""
    model = torch.nn.Linear(2, 2)
    torch.save(model, tmp_path / "whole.pt")
    torch.jit.save(torch.jit.script(model), tmp_path / "scripted.pt")
    (tmp_path / "text.pt").write_text("hello")
    torch.save([1, 2], tmp_path / "list.pt")
    said = {}
    for name in ("whole", "scripted", "text", "list"):
        with pytest.raises(SlimlabError) as error:
            load_weights(model, tmp_path / f"{name}.pt")
        said[name] = str(error.value)
        assert "\n" not in said[name] and "\x1b" not in said[name] and "weights_only=False" not in said[name]
        assert "torch.save(model.state_dict(), PATH)" in said[name]
    assert "a pickle of more than tensors" in said["whole"] and "a TorchScript archive" in said["scripted"]
    assert "not a torch checkpoint" in said["text"] and "holds a list" in said["list"]
    assert "UserWarning" not in capsys.readouterr().err  # the archive is told apart before torch.load warns of it


def test_factory_options_reach_the_model():
    model = create_model("resnet20", zero_init_residual=True)
    assert all(float(block.bn2.weight.abs().sum()) == 0 for stage in (model.layer1, model.layer2, model.layer3) for block in stage)
    assert float(create_model("resnet20").layer1[0].bn2.weight.sum()) == 16
    with pytest.raises(ConfigError, match="takes no option 'width'"):
        create_model("resnet20", width=2)
