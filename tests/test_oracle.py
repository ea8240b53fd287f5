"""External oracle: timm's implementation with the same (stressed) weights; checkpoint loading."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from deployforge.errors import DeployforgeError
from deployforge.registry import get_spec, list_models
from deployforge.stress import stress_weights
from deployforge.weights import load_weights

TOL = 1e-5
TIMM_MODELS = [s.name for s in list_models() if s.timm_name]


def _stressed_timm(timm_name: str, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return stress_weights(timm.create_model(timm_name).eval(), seed=seed)


def _mapped(spec, state: dict) -> dict:
    return spec.key_map(state) if spec.key_map is not None else dict(state)


def test_some_registered_family_has_a_timm_oracle():
    assert TIMM_MODELS, "no registered model names a timm equivalent"


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_matches_timm_with_the_same_weights(name, make_inputs, input_side, rel_l2):
    spec = get_spec(name)
    reference_model = _stressed_timm(spec.timm_name)
    ours = spec.build()
    ours.load_state_dict(_mapped(spec, reference_model.state_dict()), strict=True)
    ours.eval()
    x = make_inputs(batch=2, size=input_side(name), seed=5)
    with torch.no_grad():
        reference = reference_model(x)
        out = ours(x)
    assert out.shape == reference.shape
    assert rel_l2(out, reference) <= TOL
    # the comparison is not trivial: a different set of weights gives a different answer
    torch.manual_seed(7)
    other = stress_weights(spec.build(), seed=7)
    with torch.no_grad():
        assert rel_l2(other(x), reference) > 1e-2


# ----------------------------------------------------------------------------------------- checkpoints

CHECKPOINT_MODEL = "fastvit_t8"


@pytest.fixture(scope="module")
def timm_t8():
    return _stressed_timm(get_spec(CHECKPOINT_MODEL).timm_name)


@pytest.mark.parametrize("fmt", ["pth", "pth-wrapped", "safetensors"])
def test_timm_checkpoint_loads_through_load_weights(fmt, timm_t8, tmp_path, make_inputs, rel_l2):
    spec = get_spec(CHECKPOINT_MODEL)
    state = {k: v.detach().clone().contiguous() for k, v in timm_t8.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "timm.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "timm.pth"
        torch.save({"state_dict": state, "epoch": 3} if fmt == "pth-wrapped" else state, path)

    ours = spec.build()
    load_weights(ours, spec, path)
    expected = _mapped(spec, state)
    loaded = ours.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    x = make_inputs(batch=2, seed=6)
    with torch.no_grad():
        assert rel_l2(ours.eval()(x), timm_t8(x)) <= TOL


def test_wrong_architecture_checkpoint_lists_mismatched_keys(timm_t8, tmp_path):
    source, target = get_spec("fastvit_t8"), get_spec("fastvit_t12")
    state = _mapped(source, timm_t8.state_dict())
    path = tmp_path / "t8.pth"
    torch.save(state, path)

    model = target.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    mismatched = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
    assert missing and mismatched  # t12 has more stage-2 blocks and wider layers than t8

    with pytest.raises(DeployforgeError) as raised:
        load_weights(model, target, path)
    message = str(raised.value)
    assert f"missing {len(missing)}" in message and missing[0] in message
    assert f"mismatched {len(mismatched)}" in message and mismatched[0] in message
    assert "unexpected" not in message  # every t8 key exists in t12
    assert "fastvit_t12" in message
    # nothing was loaded
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
