import pytest
import torch

from modelfoundry.models import FAMILIES, PRESETS, build_model
from modelfoundry.models.stages import auto_split, group_module, resolve_split, run_stages, stage_params
from modelfoundry.models.vae import vae_loss

SHAPES = {  # family -> input shapes it must handle
    "mlp": [(1, 8, 8), (20, 1)],
    "cnn": [(1, 8, 8), (1, 28, 28)],
    "rnn": [(1, 8, 8), (20, 1)],
    "vae": [(1, 8, 8), (1, 28, 28)],
    "transformer": [(16,), (64,)],  # (time,): token ids of a 10-token vocabulary
}


def _build(family, preset, shape):
    if family == "transformer":
        return build_model(family, preset, vocab_size=10)
    extra = {} if family == "vae" else {"output_dim": 10}
    return build_model(family, preset, input_shape=shape, **extra)


def _input(family, shape):
    return torch.randint(0, 10, (5, *shape)) if family == "transformer" else torch.rand(5, *shape)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("preset", PRESETS)
def test_forward_backward_and_stages_compose_to_forward(family, preset):
    torch.manual_seed(0)
    for shape in SHAPES[family]:
        model = _build(family, preset, shape)
        x = _input(family, shape)
        model.train()
        out = model(x)
        loss = out.float().pow(2).mean()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        model.eval()
        with torch.no_grad():
            expected = model(x)
        assert len(model.stages()) >= 2
        torch.testing.assert_close(run_stages(model, x), expected)
        if family == "vae":
            assert expected.shape == (5, *shape)
        elif family == "transformer":
            assert expected.shape == (5, *shape, 10)
        else:
            assert expected.shape == (5, 10)


def test_cnn_default_is_the_seed_architecture():
    m = build_model("cnn", "default", input_shape=(1, 28, 28), output_dim=10)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64 * 7 * 7, 128), (128, 10)]


def test_rnn_gru_bidirectional_and_vae_loss_and_sampling():
    rnn = build_model("rnn", "tiny", input_shape=(1, 8, 8), output_dim=3, cell="gru", bidirectional=True, num_layers=2)
    assert isinstance(rnn.encoder.rnn, torch.nn.GRU)
    assert rnn(torch.rand(4, 1, 8, 8)).shape == (4, 3)
    vae = build_model("vae", "tiny", input_shape=(1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    logits, mu, logvar = vae(x, return_latent=True)
    recon, kl = vae_loss(logits, x, mu, logvar)
    assert recon.shape == kl.shape == (4,) and (kl >= 0).all() and (recon > 0).all()
    samples = vae.sample(6)
    assert samples.shape == (6, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1


def test_split_choices_equal_monolithic():
    model = build_model("mlp", "default", input_shape=(1, 8, 8), output_dim=10).eval()
    x = torch.rand(7, 1, 8, 8)
    expected = model(x)
    for split in ([[0], [1, 2]], [[0, 1], [2]], "auto", "auto:3", 2, None):
        groups = resolve_split(model, split)
        h = x
        with torch.no_grad():
            for g in groups:
                h = group_module(model, g)(h)
        torch.testing.assert_close(h, expected)
    sizes = stage_params(model)
    groups = auto_split(model, 2)
    assert max(sum(sizes[i] for i in g) for g in groups) <= max(sizes[0], sum(sizes[1:]))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_model("gpt"), "unknown model family 'gpt'"),
        (lambda: build_model("mlp", "huge"), "unknown preset 'huge'"),
        (lambda: build_model("mlp", width=3), "unknown field 'width'"),
        (lambda: build_model("mlp", dropout="lots"), "dropout: Input should be a valid number (got 'lots')"),
        (lambda: build_model("mlp", dropout=float("nan")), "dropout: Input should be a finite number"),
        (lambda: build_model("mlp", dropout=1.5), "dropout: Input should be less than 1 (got 1.5)"),
        (lambda: build_model("mlp", output_dim=True), "output_dim: Input should be a valid integer (got True)"),
        (lambda: build_model("rnn", cell="transformer"), "cell: Input should be 'lstm' or 'gru'"),
        (lambda: build_model("cnn", input_shape=(8, 8)), "cnn input_shape must be (channels, height, width)"),
        (lambda: build_model("cnn", kernel_size=4), "kernel_size must be a positive odd integer"),
        (lambda: build_model("mlp", hidden_sizes=[]), "hidden_sizes: Tuple should have at least 1 item"),
        (lambda: build_model("mlp", hidden_sizes=[8, 0]), "hidden_sizes.1: Input should be greater than 0"),
        (lambda: build_model("transformer", d_model=30, n_heads=4), "d_model 30 must be a multiple of n_heads 4"),
        (lambda: resolve_split(build_model("mlp"), [[0], [2]]), "must list every stage index"),
        (lambda: resolve_split(build_model("mlp"), "auto:9"), "needs 1 <= k <= 3"),
    ],
)
def test_bad_model_input_names_the_problem(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)
