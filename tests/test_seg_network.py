"""MGCC network of the segmentation bundle: structure, inference path, and the three perturbations."""

from pathlib import Path

import pytest
import torch

from mgcc.bundles import import_bundle_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation"


network = import_bundle_scripts(BUNDLE).network
MGCCNet, dropout, feature_dropout, feature_noise = (
    network.MGCCNet,
    network.dropout,
    network.feature_dropout,
    network.feature_noise,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on a shared 2-core machine: more intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_width_parameter_counts_match_the_reference_design():
    net = MGCCNet(base_channels=64)
    total = n_params(net)
    inference = total - n_params(net.aux_decoders)
    # the method at its reference width: inference path ~52M, training graph ~122M parameters
    assert 51e6 < inference < 53e6
    assert 121e6 < total < 123e6
    assert [m.out_channels for m in (b[0] for b in net.encoder)] == [64, 128, 256, 512, 1024]


def test_eval_runs_main_path_only_and_training_returns_four_maps():
    torch.manual_seed(0)
    net = MGCCNet(base_channels=4)
    x = torch.randn(2, 1, 32, 48)
    net.train()
    outputs = net(x)
    assert isinstance(outputs, tuple) and len(outputs) == 4
    assert all(o.shape == (2, 1, 32, 48) for o in outputs)
    net.eval()
    calls = []
    for dec in net.aux_decoders:
        dec.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, 32, 48)
    assert not calls, "auxiliary decoders must not run at inference"
    # the inference path is deterministic (no perturbation in eval mode)
    with torch.no_grad():
        assert torch.equal(y, net(x))


def test_supervised_network_trains_main_path_only():
    net = MGCCNet(base_channels=4, train_aux_decoders=False).train()
    y = net(torch.randn(2, 1, 32, 32))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, 32, 32)


def test_feature_noise_is_multiplicative_uniform_and_shared_over_the_batch():
    torch.manual_seed(0)
    x = torch.rand(3, 4, 8, 8) + 0.5
    x[:, :, 0, 0] = 0.0
    y = feature_noise(x, uniform_range=0.3)
    ratio = (y - x) / x.clamp_min(1e-6)
    assert ratio[:, :, 1:].abs().max() <= 0.3 + 1e-6
    assert ratio[:, :, 1:].std() > 0.1  # really noisy, not a constant
    assert torch.allclose(ratio[0, :, 1:], ratio[1, :, 1:], atol=1e-5)  # one noise map for the batch
    assert torch.all(y[:, :, 0, 0] == 0)  # multiplicative: zero stays zero


def test_dropout_zeroes_about_p_and_rescales_survivors():
    torch.manual_seed(0)
    x = torch.ones(4, 16, 32, 32)
    y = dropout(x, p=0.3)
    dropped = (y == 0).float().mean().item()
    assert 0.27 < dropped < 0.33
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))


def test_feature_dropout_drops_the_most_activated_positions_per_sample():
    torch.manual_seed(0)
    x = torch.zeros(2, 3, 10, 10)
    ramp = torch.linspace(0.0, 1.0, 100).view(10, 10)
    x[0] = ramp  # channel mean = ramp, max 1
    x[1] = 5 * ramp  # another scale: the threshold is relative to each sample's max
    for _ in range(5):
        y = feature_dropout(x, low=0.7, high=0.9)
        for b in range(2):
            mean = x[b].mean(0)
            peak = mean.max()
            assert torch.all(y[b][:, mean >= 0.9 * peak] == 0), "positions above 0.9*max are always dropped"
            assert torch.equal(y[b][:, mean < 0.7 * peak], x[b][:, mean < 0.7 * peak]), "below 0.7*max kept as is"


def test_each_auxiliary_decoder_reads_its_level_with_its_perturbation():
    net = MGCCNet(base_channels=4).train()
    seen = {}
    for k, dec in enumerate(net.aux_decoders):
        dec.register_forward_pre_hook(lambda m, args, k=k: seen.__setitem__(k, args[0][-1].detach().clone()))
    clean = []  # the bottleneck at levels 0..3
    net.encoder[-1].register_forward_hook(lambda m, i, o: clean.append(o.detach().clone()))
    for stage in net.global_context:
        stage.register_forward_hook(lambda m, i, o: clean.append(o.detach().clone()))
    torch.manual_seed(1)
    net(torch.rand(2, 1, 32, 32))
    assert len(clean) == 4
    for k, (level, kind) in enumerate(zip(net.aux_levels, net.aux_perturbations, strict=True)):
        x, y = clean[level], seen[k]
        if kind == "dropout":  # single elements zeroed, survivors scaled by 1/(1-p)
            kept = y != 0
            assert ((~kept) & (x != 0)).any()
            assert torch.allclose(y[kept], x[kept] / 0.7, atol=1e-5)
        elif kind == "feature_dropout":  # whole spatial positions zeroed in every channel, the rest unchanged
            dropped = (y == 0).all(dim=1)
            assert dropped.any() and not dropped.all()
            assert torch.equal(y.permute(0, 2, 3, 1)[~dropped], x.permute(0, 2, 3, 1)[~dropped])
        else:  # feature noise: x + x*n with |n| <= 0.3
            assert not torch.allclose(y, x)
            assert torch.all((y - x).abs() <= 0.3 * x.abs() + 1e-6)


def test_checkpointed_auxiliary_decoders_compute_the_same_loss_and_gradients():
    x = torch.rand(2, 1, 32, 32)
    grads, losses = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = MGCCNet(base_channels=4, checkpoint_aux=ckpt).train()
        torch.manual_seed(1)
        loss = sum(o.square().mean() for o in net(x))
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.allclose(losses[0], losses[1])
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="aux_levels"):
        MGCCNet(aux_levels=(0, 1, 4))
    with pytest.raises(ValueError, match="unknown perturbation"):
        MGCCNet(aux_perturbations=("feature_noise", "dropout", "cutout"))


def test_checkpoint_of_another_width_or_unreadable_is_named(tmp_path):
    checked = network.checked_checkpoint
    path = tmp_path / "model.pt"
    assert checked(str(path), 8) == str(path)  # not trained yet: the configs still parse
    torch.save(MGCCNet(base_channels=4).state_dict(), path)
    assert checked(str(path), 4) == str(path)
    with pytest.raises(SystemExit, match="trained with base_channels 4, the config says 8: run with --base_channels 4"):
        checked(str(path), 8)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(SystemExit, match="model.pt: not a readable PyTorch checkpoint"):
        checked(str(path), 4)


def test_the_training_size_travels_with_the_weights(tmp_path):
    """A network trained at 128x128 saves its size in its weights; a config at 256x256 is refused by name, and
    weights saved before the size was recorded still load (and are not checked)."""
    path = tmp_path / "model.pt"
    torch.save(MGCCNet(base_channels=4, input_size=[128, 128]).state_dict(), path)
    assert network.checked_checkpoint(str(path), 4, [128, 128]) == str(path)
    with pytest.raises(SystemExit, match=r"trained at spatial_size \[128, 128\], the config says \[256, 256\]"):
        network.checked_checkpoint(str(path), 4, [256, 256])
    net = MGCCNet(base_channels=4, input_size=[256, 256])
    net.load_state_dict(torch.load(path, weights_only=True))
    assert net.input_size.tolist() == [128, 128]  # the weights' size, whatever the config built

    legacy = {k: v for k, v in torch.load(path, weights_only=True).items() if k != "input_size"}
    torch.save(legacy, path)
    assert network.checked_checkpoint(str(path), 4, [256, 256]) == str(path)
    net.load_state_dict(torch.load(path, weights_only=True))
    assert net.input_size.tolist() == [0, 0]


def test_input_size_not_divisible_by_16_is_named():
    with pytest.raises(ValueError, match=r"divisible by 16 .* got \[40, 48\]: set spatial_size"):
        MGCCNet(base_channels=4).eval()(torch.rand(1, 1, 40, 48))


def test_the_network_scripts_and_the_scripted_model_gives_the_checkpoints_output():
    """`torch.jit.script` (what `ckpt_export` does without `--use_trace`) compiles the inference path."""
    torch.manual_seed(0)
    net = MGCCNet(base_channels=4, input_size=(32, 48)).eval()
    scripted = torch.jit.script(net)
    for shape in ((2, 1, 32, 48), (1, 1, 64, 32)):  # any multiple of 16, unlike a trace at one shape
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.equal(scripted(x), net(x))
    with pytest.raises(torch.jit.Error, match=r"divisible by 16 .* got \[40, 48\]"):
        scripted(torch.rand(1, 1, 40, 48))


def test_flip_tta_averages_the_image_and_its_mirror_and_is_mirror_equivariant():
    """``flip_tta``: the logit of the mean probability over the image and its left-right mirror (the first spatial
    axis: width in MONAI's layout); so the mask of a mirrored image is the mirrored mask (the plain network's is
    not), and training ignores it."""
    torch.manual_seed(0)
    plain = MGCCNet(base_channels=4, input_size=(32, 48)).eval()
    tta = MGCCNet(base_channels=4, input_size=(32, 48), flip_tta=True).eval()
    tta.load_state_dict(plain.state_dict())  # no weights of its own
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        expected = (torch.sigmoid(plain(x)) + torch.sigmoid(plain(x.flip(2)).flip(2))) / 2
        out = tta(x)
        assert torch.allclose(torch.sigmoid(out), expected, atol=1e-5)
        assert torch.allclose(tta(x.flip(2)), out.flip(2), atol=1e-4)
        assert not torch.allclose(tta(x.flip(3)), out.flip(3), atol=1e-2)  # depth is not mirrored
        assert not torch.allclose(plain(x.flip(2)), plain(x).flip(2), atol=1e-2)
        assert torch.equal(torch.jit.script(tta)(x), out)  # what ckpt_export writes keeps it
    assert len(tta.train()(x)) == 4
    assert MGCCNet(base_channels=4, flip_tta="false").flip_tta is False  # as `--flip_tta false` passes it


def test_width_and_size_options_are_checked_or_normalised():
    net = network.MGCCNet(base_channels=8.0, input_size=64)  # what `--base_channels 8.0 --spatial_size 64` give
    assert net.input_size.tolist() == [64, 64] and net.encoder[0][0].out_channels == 8
    for bad, message in (
        ({"base_channels": 8.5}, "base_channels must be a whole number"),
        ({"input_size": [100, 128]}, "spatial_size must be two multiples of 16"),
    ):
        with pytest.raises(ValueError, match=message):
            network.MGCCNet(**bad)
