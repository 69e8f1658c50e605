"""Fingerprints: a module's state changes with every in-place update; its digest is its weights' content."""

import copy

import torch

from ragloop.cache import content_digest, module_state, stamp, weights_digest


def test_module_state_follows_in_place_changes_and_identity():
    layer = torch.nn.Linear(3, 2)
    before = module_state(layer)
    assert module_state(layer) == before
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert module_state(layer) != before
    assert module_state(copy.deepcopy(layer))[0] != module_state(layer)[0]


def test_weights_digest_is_the_content_across_objects():
    layer = torch.nn.Linear(3, 2)
    twin = copy.deepcopy(layer)
    assert weights_digest(layer) == weights_digest(twin)
    with torch.no_grad():
        twin.bias.mul_(2.0)
    assert weights_digest(layer) != weights_digest(twin)


def test_stamps_are_never_reused_and_digests_ignore_key_order():
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    assert stamp(a) == stamp(a) != stamp(b)
    assert content_digest({"x": 1, "y": [2]}) == content_digest({"y": [2], "x": 1}) != content_digest({"x": 2})
    assert len(content_digest({}, 32)) == 32
