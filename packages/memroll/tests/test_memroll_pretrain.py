"""The ``[pretrain]`` table: DEQ4IP's denoiser pretraining before training, and the i-RIM configs'
masked loss."""

from __future__ import annotations

import pytest
import torch

from memroll import config as _config

DEQ = """
name = "deq"
description = "a tiny DEQ4IP"

[task]
name = "deblur"
image_size = 16

[model]
name = "DEQ"
features = 4
depth = 3
batchnorm = true
init = "measurements"

[strategy]
name = "implicit"

[train]
steps = 2
batch_size = 2
"""


def _load(tmp_path, text=DEQ, overrides=()):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return _config.load_config(path, overrides)


def _prox_params(model):
    return torch.cat([p.detach().flatten() for p in model.stages[0].prox.parameters()])


def test_build_model_pretrains_on_the_training_split_only(tmp_path):
    plain = _load(tmp_path)
    pretrained = _load(tmp_path, overrides=("pretrain.steps=3", "pretrain.batch_size=2"))
    assert pretrained.pretrain.steps == 3
    train = _config.make_task(plain, "train")
    val = _config.make_task(plain, "val")
    base = _prox_params(_config.build_model(plain, train))
    assert torch.equal(_prox_params(_config.build_model(pretrained, val)), base)  # eval: none
    again = _config.build_model(pretrained, train)
    assert not torch.equal(_prox_params(again), base)
    assert torch.equal(_prox_params(_config.build_model(pretrained, train)), _prox_params(again))
    unpretrained = _config.build_model(pretrained, train, pretrain=False)  # explicit: none
    assert torch.equal(_prox_params(unpretrained), base)
    text = _config.dump_config(pretrained)
    assert "[pretrain]" in text
    assert "[pretrain]" not in _config.dump_config(plain)


def test_pretrain_table_bad_values(tmp_path):
    with pytest.raises(ValueError, match=r"pretrain\.steps must be an integer >= 0, got -1"):
        _load(tmp_path, overrides=("pretrain.steps=-1",))
    with pytest.raises(ValueError, match=r"pretrain\.noise must be a number > 0"):
        _load(tmp_path, overrides=("pretrain.noise=0.0",))
    with pytest.raises(ValueError, match=r"denoiser pretraining is for the DEQ model.*not LUSER"):
        _config.load_config("luser_deblur", ["pretrain.steps=2"])


@pytest.mark.parametrize("name", ["irim_2d", "irim_3d"])
def test_irim_configs_train_with_the_papers_masked_loss(name):
    config = _config.load_config(name)
    assert config.train.loss == "masked_nmse"
    assert config.train.loss_options == {"fraction": 0.01}
