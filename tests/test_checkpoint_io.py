"""Checkpoints that pickle foreign objects: classes of absent modules load as inert stand-ins, code never runs.

The files are written the way the releases write them (``torch.save`` of a
dict with ``model`` and SimMIM's yacs ``config``, a ``dict`` subclass), from a
module that exists only while saving: at load it is truly absent.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types

import pytest
import torch

import reference_models as ref
from vitlocal.errors import CorruptFileError
from vitlocal.models.checkpoint_io import Foreign, load_checkpoint
from vitlocal.models.extractor import build_model, read_checkpoint
from vitlocal.models.registry import resolve
from vitlocal.models.weights import weights_path

ABSENT = "vitlocal_absent_yacs.config"


def _state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"encoder.patch_embed.proj.weight": torch.randn(4, 3, 2, 2, generator=generator),
            "encoder.cls_token": torch.randn(1, 1, 4, generator=generator)}


def _save_with_absent_class(path, protocol: int, weights: dict | None = None) -> dict[str, torch.Tensor]:
    """A SimMIM-like checkpoint whose ``config`` is a CfgNode (dict subclass) of a module removed after saving."""
    module = types.ModuleType(ABSENT)
    exec(  # a yacs-like CfgNode: a dict with attribute access and an immutability flag in __dict__
        "class CfgNode(dict):\n"
        "    def __init__(self, init=None):\n"
        "        super().__init__(init or {})\n"
        "        self.__dict__['immutable'] = True\n",
        module.__dict__,
    )
    package = types.ModuleType(ABSENT.split(".")[0])
    package.config = module
    sys.modules.update({package.__name__: package, ABSENT: module})
    try:
        inner = module.CfgNode({"NAME": "simmim_pretrain", "PATCH_SIZE": 16})
        config = module.CfgNode({"MODEL": inner, "SEED": 0, "LAYERS": [1, 2]})
        weights = _state_dict() if weights is None else weights
        torch.save({"model": weights, "config": config, "epoch": 799}, path, pickle_protocol=protocol)
    finally:
        del sys.modules[ABSENT], sys.modules[package.__name__]
    assert importlib.util.find_spec(ABSENT.split(".")[0]) is None  # truly absent at load
    return weights


@pytest.mark.parametrize("protocol", [2, 1])
def test_class_of_an_absent_module_loads_as_an_inert_stand_in(tmp_path, protocol):
    path = tmp_path / "simmim_pretrain__vit_base__img224__800ep.pth"
    weights = _save_with_absent_class(path, protocol)
    loaded = read_checkpoint(path)
    assert set(loaded) == {"model", "config", "epoch"} and loaded["epoch"] == 799
    for key, tensor in weights.items():
        torch.testing.assert_close(loaded["model"][key], tensor, rtol=0, atol=0)
    config = loaded["config"]
    assert isinstance(config, Foreign) and config.foreign_name == f"{ABSENT}.CfgNode"
    assert config.items["SEED"] == 0 and config.items["LAYERS"] == [1, 2]
    assert config.items["MODEL"].items == {"NAME": "simmim_pretrain", "PATCH_SIZE": 16}
    assert ABSENT not in sys.modules  # nothing was imported


class _System:
    """Pickles as ``os.system(command)``: the classic malicious ``__reduce__``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Popen:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return subprocess.Popen, (["sh", "-c", self.command],)


class _Eval:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return eval, (f"__import__('os').system({self.command!r})",)


@pytest.mark.parametrize("attack", [_System, _Popen, _Eval])
def test_a_malicious_reduce_is_refused_and_never_runs(tmp_path, attack):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": _state_dict(), "x": attack(f"touch {marker}")}, path)
    with pytest.raises(CorruptFileError, match=r"evil\.pth.*refusing to load global (posix|subprocess|builtins)\."):
        read_checkpoint(path)
    assert not marker.exists()


def test_plain_checkpoints_still_load_weights_only(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"model": _state_dict(), "epoch": 3}, path)
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["model"]["encoder.cls_token"], _state_dict()["encoder.cls_token"])


def test_simmim_release_with_its_yacs_config_builds_the_authors_model(tmp_path):
    """SimMIM's file layout ({model, config: CfgNode, epoch}) -> converter -> the official encoder's tokens."""
    official = ref.randomize_(ref.SimMIM(img=64, patch=16, dim=48, depth=2, heads=3), seed=0).eval()
    spec = resolve("simmim", {"model_kwargs": {"img_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 3}})
    path = weights_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    _save_with_absent_class(path, 2, weights=official.state_dict())
    model = build_model(spec, tmp_path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = official.encoder(x, mask=torch.zeros(2, 4, 4))
        torch.testing.assert_close(model.forward_features(x), expected, atol=1e-5, rtol=0)
