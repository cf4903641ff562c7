"""Method settings: declared per method class, given under ``method.options``, checked before training
with the config's own key / type / domain checks; documented in docs/methods.md."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from vidcsl.config import load_config
from vidcsl.errors import ConfigError
from vidcsl.methods.base import BUILT_IN, method_class

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


@pytest.mark.parametrize("overrides, message", [
    (["method.name=simclr", "method.options.momentum=0.9"],
     "config key 'method.options.momentum' is unknown: method 'simclr' has no options"),
    (["method.name=byol", "method.options.momentun=0.9"],
     "config key 'method.options.momentun' is unknown (did you mean 'method.options.momentum'?)"),
    (["method.name=byol", "method.options.momentum=fast"], "config key 'method.options.momentum' expects float"),
    (["method.name=byol", "method.options.momentum=1.5"], "config key 'method.options.momentum' must be >= 0 and < 1"),
    (["method.name=byol", "method.options.momentum_schedule=linear"],
     "config key 'method.options.momentum_schedule' must be one of ('constant', 'cosine')"),
    (["method.name=simsiam", "method.options.predictor_hidden_dim=0"],
     "config key 'method.options.predictor_hidden_dim' must be >= 1"),
    (["method.name=vicreg", "method.options.eps=0"], "config key 'method.options.eps' must be > 0"),
    (["method.name=moco", "method.options.queue_size=2.5"], "config key 'method.options.queue_size' expects int"),
    (["method.name=supervised", "method.options.two_views=maybe"],
     "config key 'method.options.two_views' expects bool"),
    (["method.name=rocl", "method.options.eps=a/b"],
     "config key 'method.options.eps' expects a number or a fraction like '8/255'"),
    (["method.name=clae", "method.options.variant=x_j"], "config key 'method.options.variant' must be one of"),
    (["method.name=dino"], "config key 'method.name' is 'dino', not a known method"),
    (["method.moco_momentum=0.9"], "config key 'method.moco_momentum' is unknown"),  # the old typed fields are gone
    (["method.name=barlow", "fn.detector=topk"], "config key 'fn.detector' is 'topk', but method 'barlow' has no"),
    (["method.collapse_std=1"], "config key 'method.collapse_std' must be >= 0 and < 1"),
])
def test_bad_settings_fail_before_training_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_settings_are_typed_and_fractions_parsed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: rocl\n  options:\n    eps: 4/255\n    steps: 3\n    adv_weight: 2\n")
    cfg = load_config(path)
    settings = method_class("rocl").read_settings(cfg)
    assert settings.eps == pytest.approx(4 / 255) and settings.steps == 3
    assert settings.adv_weight == 2.0 and isinstance(settings.adv_weight, float)
    assert cfg.method.options["eps"] == "4/255"  # the config keeps what was written; the method reads the number
    byol = method_class("byol").read_settings(load_config(None, ["method.name=byol",
                                                                 "method.options.predictor_hidden_dim=null"]))
    assert byol.predictor_hidden_dim is None and byol.momentum == pytest.approx(0.996)


PAPER_DEFAULTS = {  # what docs/methods.md promises, per method (the papers' / authors' code values)
    "moco": {"momentum": 0.999, "queue_size": 65536, "momentum_schedule": "constant"},
    "byol": {"momentum": 0.996, "momentum_schedule": "cosine"},
    "vicreg": {"invariance_weight": 25.0, "variance_weight": 25.0, "covariance_weight": 1.0, "std_target": 1.0,
               "eps": 1e-4},
    "barlow": {"off_diagonal_weight": 0.0051},
    "clae": {"eps": 0.015, "adv_weight": 1.0, "variant": "published", "adv_bn_momentum": 0.01, "dual_bn": True},
    "rocl": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 7, "dual_bn": False},
    "acl": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 5, "dual_bn": True},
}


@pytest.mark.parametrize("name", sorted(PAPER_DEFAULTS))
def test_defaults_are_the_papers(name):
    settings = method_class(name).read_settings(load_config(None, [f"method.name={name}"]))
    for key, value in PAPER_DEFAULTS[name].items():
        assert getattr(settings, key) == pytest.approx(value) if isinstance(value, float) else \
            getattr(settings, key) == value, (name, key)


def test_every_method_and_every_setting_is_documented():
    text = DOCS.read_text()
    for name in BUILT_IN:
        cls = method_class(name)
        section = re.search(rf"^## .*`{name}`.*?(?=^## |\Z)", text, re.S | re.M)
        assert section, f"docs/methods.md has no section for method {name!r}"
        for f in dataclasses.fields(cls.settings_class):
            assert f"`{f.name}`" in section.group(0), f"docs/methods.md: {name} does not document {f.name!r}"
            assert f.default is not dataclasses.MISSING, (name, f.name)  # every setting has a default
