"""Training data pieces: the stratified split, pair and triplet sampling, augmentation, losses."""

from __future__ import annotations

import pytest
import torch

from lookalike import InputError
from lookalike.training import Augment
from lookalike.training.data import stratified_split
from lookalike.training.losses import contrastive_loss, triplet_loss
from lookalike.training.pairs import balanced_pairs, triplets


def test_stratified_split_is_seeded_and_keeps_every_class_on_both_sides() -> None:
    labels = ["a"] * 10 + ["b"] * 5 + ["c"] * 2
    train, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in val) for c in "abc"] == [2, 1, 1]
    assert stratified_split(labels, 0.2, seed=3) == (train, val)
    assert stratified_split(labels, 0.2, seed=4) != (train, val)
    # pairs need two validation images of a class: too small a class stays in training
    _, val2 = stratified_split(labels, 0.2, seed=3, min_per_class=2)
    assert [sum(labels[i] == c for i in val2) for c in "abc"] == [2, 2, 0]
    with pytest.raises(InputError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_pairs_are_balanced_and_triplets_valid() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])  # class 2 has one image: never an anchor
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        first, second, same = balanced_pairs(labels, g)
        assert same.mean() == 0.5 and bool((first != second).all())
        assert torch.equal((labels[first] == labels[second]).float(), same)
        anchor, positive, negative = triplets(labels, g)
        assert bool((labels[anchor] == labels[positive]).all() and (anchor != positive).all())
        assert bool((labels[anchor] != labels[negative]).all()) and 5 not in anchor.tolist()
    first, second, same = balanced_pairs(labels, torch.Generator().manual_seed(1), n_pairs=40)
    assert len(first) == 40 and same.sum() == 20
    with pytest.raises(InputError, match="two classes"):
        balanced_pairs(torch.zeros(5, dtype=torch.long), g)


def test_augmentation_is_seeded_and_keeps_shape_and_range() -> None:
    x = torch.rand(6, 3, 20, 24, generator=torch.Generator().manual_seed(0)) * 255
    augment = Augment(flip=True, crop=0.6, jitter=0.3, noise=0.05)
    a = augment(x, torch.Generator().manual_seed(7))
    b = augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 255
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(8)))
    flipped = Augment(flip=True)(x, torch.Generator().manual_seed(1))
    for img, out in zip(x, flipped, strict=True):  # each image is itself or its mirror image
        assert torch.allclose(out, img, atol=1e-3) or torch.allclose(out, img.flip(-1), atol=1e-3)
    assert torch.equal(Augment()(x, torch.Generator()), x)
    with pytest.raises(InputError, match="crop"):
        Augment(crop=1.5)


def test_losses_reward_the_right_geometry() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # a matching pair at distance 0 and a non-matching pair beyond the margin cost nothing
    assert contrastive_loss(a, b, torch.tensor([1.0, 0.0]), margin=1.0) < 1e-9
    # the same pairs with the labels swapped are penalised
    assert contrastive_loss(a, b, torch.tensor([0.0, 1.0]), margin=1.0) > 0.9
    assert triplet_loss(a[:1], a[:1], b[1:], margin=0.2) < 1e-6
    assert triplet_loss(a[:1], b[1:], a[:1], margin=0.2) > 1.0


def test_method_options_given_as_text_mean_what_they_say() -> None:
    from lookalike.training.methods import method_spec

    options, augment, limit = method_spec("siamese").resolve(
        {"freeze_trunk": "false", "flip": "no", "channels": "16,32", "margin": "0.5", "max_per_class": "40"}
    )
    assert options["freeze_trunk"] is False and augment.flip is False and limit == 40
    assert options["channels"] == [16, 32] and options["margin"] == 0.5
    with pytest.raises(InputError, match="option dense must be a whole number"):
        method_spec("cnn").resolve({"dense": "big"})
    with pytest.raises(InputError, match="unknown option"):
        method_spec("vae").resolve({"margin": 1.0})


def test_mask_noise_zeroes_whole_pixels_while_training_only() -> None:
    from lookalike.training.models import MaskNoise

    torch.manual_seed(0)
    layer, x = MaskNoise(0.5), torch.ones(4, 3, 32, 32)
    masked = layer.train()(x)
    zero = masked == 0
    assert (zero.all(dim=1) == zero.any(dim=1)).all()  # all channels of a pixel together
    assert 0.45 < zero[:, 0].float().mean().item() < 0.55
    assert torch.equal(layer.eval()(x), x)
    with pytest.raises(InputError, match="mask must be in"):
        MaskNoise(1.0)
