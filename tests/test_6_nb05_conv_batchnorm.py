"""bnlib section 6, notebook 05's block: the small conv net and its copies trained side by side,
checked against the same torch.nn networks trained one by one with torch.optim.SGD."""
import numpy as np
import pytest
import torch

import bnlib

RNG = np.random.default_rng(5)
X = RNG.random((40, 784)).astype(np.float32)
Y = RNG.integers(0, 10, 40)
SEEDS, RATES = [3, 7], [0.05, 0.02]


def one_by_one(seed, rate, batch_size, steps, batchnorm=True, per_image=False):
    """conv_net(seed) trained alone by torch.optim.SGD on the batches train_side_by_side promises:
    default_rng(seed), batch_size digits a step drawn with replacement. per_image: BatchNorm2d
    replaced by torch's InstanceNorm2d with running statistics and the same parameters."""
    net = bnlib.conv_net(batchnorm=batchnorm, seed=seed)
    if per_image:
        bn = net[2]
        inorm = torch.nn.InstanceNorm2d(bn.num_features, affine=True, track_running_stats=True)
        inorm.load_state_dict(bn.state_dict())
        net[2] = inorm
    opt = torch.optim.SGD(net.parameters(), lr=rate)
    rng, losses = np.random.default_rng(seed), []
    net.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(X), size=batch_size))
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(X)[idx]), torch.from_numpy(Y)[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return net, np.array(losses)


def test_conv_net_gives_twelve_by_twelve_maps_and_drops_the_conv_bias_with_bn():
    with_bn, plain = bnlib.conv_net(width=3), bnlib.conv_net(batchnorm=False, width=3)
    assert with_bn[1](torch.zeros(2, 1, 28, 28)).shape == (2, 3, 12, 12)
    assert with_bn[1].bias is None and isinstance(with_bn[2], torch.nn.BatchNorm2d)
    assert plain[1].bias is not None and not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert with_bn(torch.from_numpy(X[:5])).shape == (5, 10)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_each_copy_computes_what_its_conv_net_computes(batchnorm):
    nets = bnlib.conv_nets_side_by_side(SEEDS, batchnorm=batchnorm).train()
    alone = [bnlib.conv_net(batchnorm=batchnorm, seed=s).train() for s in SEEDS]
    own = torch.from_numpy(X[:12].reshape(2, 6, 784))                       # copy k gets own[k]
    with torch.no_grad():
        out = nets(own)
        for k, net in enumerate(alone):
            assert torch.allclose(out[k], net(own[k]), atol=1e-5)
        if batchnorm:                                                       # running stats, copy by copy
            width = nets.width
            for k, net in enumerate(alone):
                assert torch.allclose(nets.bn.running_var[k * width:(k + 1) * width], net[2].running_var)
        shared = nets.eval()(torch.from_numpy(X[:6]))                       # the same digits for all
        for k, net in enumerate(alone):
            assert torch.allclose(shared[k], net.eval()(torch.from_numpy(X[:6])), atol=1e-5)


@pytest.mark.parametrize("batchnorm, per_image, batch_size",
                         [(True, False, 1), (True, False, 4), (False, False, 3), (True, True, 4)])
def test_training_side_by_side_is_sgd_on_each_net_alone(batchnorm, per_image, batch_size):
    steps = 5
    nets = bnlib.conv_nets_side_by_side(SEEDS, batchnorm=batchnorm, per_image=per_image)
    losses = bnlib.train_side_by_side(nets, X, Y, RATES, batch_size, examples=steps * batch_size)
    assert losses.shape == (steps, 2)
    acc = bnlib.side_by_side_accuracy(nets, X, Y)
    for k, (seed, rate) in enumerate(zip(SEEDS, RATES)):
        net, want = one_by_one(seed, rate, batch_size, steps, batchnorm, per_image)
        np.testing.assert_allclose(losses[:, k], want, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            logits = nets.eval()(torch.from_numpy(X))[k]
            assert torch.allclose(logits, net.eval()(torch.from_numpy(X)), atol=1e-4)
            assert acc[k] == np.mean(net(torch.from_numpy(X)).argmax(1).numpy() == Y)
        if batchnorm:
            width = nets.width
            assert torch.allclose(nets.bn.running_mean[k * width:(k + 1) * width], net[2].running_mean, atol=1e-6)
            assert torch.allclose(nets.bn.running_var[k * width:(k + 1) * width], net[2].running_var, atol=1e-6)


def test_per_image_accuracy_is_training_mode_bn_on_one_digit_at_a_time():
    nets = bnlib.conv_nets_side_by_side(SEEDS)
    bnlib.train_side_by_side(nets, X, Y, RATES, batch_size=1, examples=6)
    got = bnlib.side_by_side_accuracy(nets, X[:12], Y[:12], per_image=True)
    assert nets.training and not nets.test_per_image                       # mode given back
    for k, (seed, rate) in enumerate(zip(SEEDS, RATES)):
        net, _ = one_by_one(seed, rate, 1, 6)
        net.train()                    # training mode: each batch of one digit uses its own statistics
        with torch.no_grad():
            pred = [net(torch.from_numpy(X[i:i + 1])).argmax(1).item() for i in range(12)]
        assert got[k] == np.mean(np.array(pred) == Y[:12])


def test_copies_with_the_same_seed_see_the_same_digits_and_a_diverging_copy_leaves_the_others_alone():
    nets = bnlib.conv_nets_side_by_side([4, 4])
    losses = bnlib.train_side_by_side(nets, X, Y, [0.01, 1e6], batch_size=2, examples=20)
    assert losses[0, 0] == pytest.approx(losses[0, 1], rel=1e-6)            # same start, same batch
    assert np.all(np.isfinite(losses[:, 0]))
    _, alone = one_by_one(4, 0.01, 2, 10)
    np.testing.assert_allclose(losses[:, 0], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("call, words", [
    (lambda n: bnlib.train_side_by_side(n, X, Y, [0.1], 1, 4), "rates must be (2,)"),
    (lambda n: bnlib.train_side_by_side(n, X, Y, [0.1, -1.0], 1, 4), "positive"),
    (lambda n: bnlib.train_side_by_side(n, X, Y, RATES, 0, 4), "batch_size"),
    (lambda n: bnlib.train_side_by_side(n, X, Y, RATES, 8, 4), "examples"),
    (lambda n: bnlib.train_side_by_side(n, X.reshape(-1, 28, 28), Y, RATES, 1, 4), "(N, 784)"),
    (lambda n: bnlib.side_by_side_accuracy(n, X, Y[:-1]), "y must be (N,)"),
    (lambda n: bnlib.conv_nets_side_by_side([]), "seeds"),
    (lambda n: bnlib.conv_nets_side_by_side([0.5]), "whole numbers"),
    (lambda n: bnlib.conv_net(width=0), "width"),
])
def test_careless_arguments_get_a_clear_error(call, words):
    nets = bnlib.conv_nets_side_by_side(SEEDS)
    with pytest.raises(ValueError, match=None) as err:
        call(nets)
    assert words in str(err.value)


def test_effective_values_of_independent_values_is_their_number():
    maps = np.random.default_rng(0).standard_normal((400, 2, 6, 6))          # nothing correlated
    m_eff = bnlib.effective_values(maps, batch_size=4, n_batches=4000)
    np.testing.assert_allclose(m_eff, 4 * 36, rtol=0.1)


def test_effective_values_of_constant_images_is_about_the_number_of_images():
    values = np.random.default_rng(1).standard_normal((2000, 3, 1, 1))
    maps = np.broadcast_to(values, (2000, 3, 5, 5))                          # every pixel of an image equal
    # n normal values: Var(biased variance) = 2 sigma^4 (n - 1) / n^2 and mu4 - sigma^4 = 2 sigma^4
    n = 8
    np.testing.assert_allclose(bnlib.effective_values(maps, batch_size=n, n_batches=4000), n * n / (n - 1),
                               rtol=0.1)


def test_effective_values_refuses_a_constant_channel():
    maps = np.ones((5, 2, 3, 3))
    with pytest.raises(ValueError, match="constant"):
        bnlib.effective_values(maps, 2)
