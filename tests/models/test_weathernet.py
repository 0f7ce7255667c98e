"""models/weathernet.py: shapes, identity at start, local (tileable) statistics, DCT bases, the
physical head, and ONNX export parity of the blocks and the whole network at odd sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx_export import export_onnx
from models.weathernet import GatedBlock, LocalChannelStatistics, MULTIPLE, PhysicalHead, WEATHER_LABELS, WeatherNet, WeatherNetConfig, adapt_state_dict, build_weathernet, dct_basis, dct_frequencies, feature_channels, fuse_for_inference, weather_onehot


pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(width=8, max_channels=32, encoder_blocks=(1, 1, 1, 1), middle_blocks=1,
            decoder_blocks=(1, 1, 1, 1))


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised gates and heads make a new network the identity: perturb every parameter
    so the tests exercise real arithmetic."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("attention", ["pool", "dct"])
@pytest.mark.parametrize("head", ["residual", "physical"])
def test_a_new_network_is_nearly_the_identity(attention: str, head: str) -> None:
    model = build_weathernet(**TINY, attention=attention, head=head).eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        y = model(x)
    if head == "residual":
        torch.testing.assert_close(y, x, rtol=0, atol=0)
    else:  # t = t_min + (1 - t_min) sigmoid(4) = 0.984: within 2% of the input
        assert float((y - x).abs().max()) < 0.02


def test_output_and_features_have_the_documented_shapes() -> None:
    config = WeatherNetConfig(**TINY)
    model = _randomised(WeatherNet(config))
    x = torch.rand(2, 3, 3 * MULTIPLE, 5 * MULTIPLE)
    with torch.no_grad():
        out, features = model.forward_features(x)
        plain = model(x)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    channels = feature_channels(config)
    assert channels == (32, 32, 32, 32)  # 8 * 2**level, capped at max_channels
    for feature, c, scale in zip(features, channels, (4, 8, 16, 16)):
        assert feature.shape == (2, c, x.shape[2] // scale, x.shape[3] // scale)


def test_default_size() -> None:
    model = WeatherNet()
    assert sum(p.numel() for p in model.parameters()) == 1_065_847
    assert feature_channels(model.config) == (64, 96, 96, 96)


@pytest.mark.parametrize(
    "bad", [dict(attention="global"), dict(head="none"), dict(width=12), dict(encoder_blocks=(1, 1)),
            dict(refine=-1), dict(refine=8, refine_layers=1)]
)
def test_bad_configs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        WeatherNetConfig(**bad)  # type: ignore[arg-type]


def test_config_round_trips_through_a_dict() -> None:
    config = WeatherNetConfig(**TINY, attention="pool")
    assert WeatherNetConfig.from_dict(config.as_dict()) == config


def test_dct_frequencies_are_the_lowest_in_zigzag_order() -> None:
    assert dct_frequencies(6) == [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1), (2, 0)]
    basis = torch.stack([dct_basis(7, u) for u in range(7)]).double()
    gram = basis @ basis.T  # DCT-II bases are orthogonal
    assert float((gram - torch.diag(torch.diag(gram))).abs().max()) < 1e-7
    torch.testing.assert_close(dct_basis(7, 0), torch.full((7,), 1 / 7))  # (0) is the mean


def test_pool_statistics_are_the_local_mean() -> None:
    stats = LocalChannelStatistics(4, "pool", window=5)
    x = torch.rand(1, 4, 20, 30)
    y = stats(x)
    torch.testing.assert_close(y[0, :, 10, 12], x[0, :, 8:13, 10:15].mean(dim=(1, 2)))


def test_statistics_are_local_so_tiles_agree() -> None:
    """A change far from a pixel (beyond the window) leaves its statistic unchanged: no global pooling."""
    stats = LocalChannelStatistics(16, "dct", window=7)
    x = torch.rand(1, 16, 40, 40)
    changed = x.clone()
    changed[..., 30:, 30:] += 1.0
    torch.testing.assert_close(stats(x)[..., :20, :20], stats(changed)[..., :20, :20])


def test_dct_groups_get_distinct_frequencies() -> None:
    stats = LocalChannelStatistics(16, "dct", window=7)
    rows = stats.rows[:, 0, :, 0]
    cols = stats.cols[:, 0, 0, :]
    pairs = {(tuple(r.tolist()), tuple(c.tolist())) for r, c in zip(rows, cols)}
    assert len(pairs) == 8  # 8 groups of 2 channels, one frequency each


def test_physical_head_inverts_the_scattering_model() -> None:
    """With t and A set, the head returns J exactly from I = J t + A (1 - t)."""
    head = PhysicalHead(4, 4, t_min=0.1)
    t_value, a_value = 0.4, 0.7
    with torch.no_grad():
        head.transmission.bias.fill_(float(np.log((t_value - 0.1) / 0.9 / (1 - (t_value - 0.1) / 0.9))))
        head.airlight.bias.fill_(float(np.log(a_value / (1 - a_value))))
    clean = torch.rand(1, 3, 16, 16)
    hazy = clean * t_value + a_value * (1 - t_value)
    with torch.no_grad():
        out = head(hazy, torch.zeros_like(hazy), torch.rand(1, 4, 4, 4), torch.rand(1, 4, 1, 1))
    torch.testing.assert_close(out, clean, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["pool", "dct"])
def test_block_exports_to_onnx_at_odd_sizes(tmp_path: Path, attention: str) -> None:
    block = _randomised(GatedBlock(16, attention, window=7))
    diff = export_onnx(block, tmp_path / "block.onnx", (1, 16, 24, 24), check_shape=(2, 16, 37, 53),
                       fp16_storage=False, tolerance=1e-4)
    assert diff <= 1e-4


@pytest.mark.parametrize("head", ["residual", "physical"])
def test_network_exports_to_onnx_with_dynamic_sides(tmp_path: Path, head: str) -> None:
    model = _randomised(WeatherNet(WeatherNetConfig(**TINY, head=head)))
    diff = export_onnx(model, tmp_path / "net.onnx", (1, 3, 64, 64),
                       check_shape=(2, 3, 3 * MULTIPLE, 7 * MULTIPLE), fp16_storage=False, tolerance=1e-4)
    assert diff <= 1e-4


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
@pytest.mark.parametrize("attention", ["pool", "dct"])
def test_the_fused_network_computes_the_trained_one_with_fewer_onnx_nodes(tmp_path: Path, attention: str) -> None:
    """fuse_for_inference folds the norms' affine and the gates' scales into convolutions and splits
    the gates: same outputs (to float32 rounding), no ReduceMean and no gate's Slice left, and it exports
    with dynamic sides like the trained network; the trained network is left as it was."""

    model = _randomised(WeatherNet(WeatherNetConfig(**TINY, attention=attention)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, GatedBlock) for m in fused.modules())
    x = torch.rand(2, 3, 3 * MULTIPLE, 5 * MULTIPLE)
    with torch.no_grad():
        assert float((fused(x) - model(x)).abs().max()) < 1e-5
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    diff = export_onnx(fused, tmp_path / "fused.onnx", (1, 3, 64, 64), check_shape=(2, 3, 3 * MULTIPLE, 7 * MULTIPLE),
                       fp16_storage=False, tolerance=1e-4)
    assert diff <= 1e-4
    export_onnx(model, tmp_path / "trained.onnx", (1, 3, 64, 64), check_shape=(1, 3, 48, 80), fp16_storage=False, tolerance=1e-4)
    ops = {name: [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node] for name in ("fused.onnx", "trained.onnx")}
    assert ops["trained.onnx"].count("ReduceMean") > 0 and ops["trained.onnx"].count("Slice") > 0
    assert "ReduceMean" not in ops["fused.onnx"]
    assert ops["fused.onnx"].count("Slice") == ops["trained.onnx"].count("Slice") - 4 * 9  # two per gate, 9 blocks; the head's stay
    assert len(ops["fused.onnx"]) < len(ops["trained.onnx"])


def _blocked_layout_leaks(path: Path, tmp_path: Path) -> list[str] | None:
    """The ops ONNX Runtime's optimized CPU graph of ``path`` sends from its blocked (NCHWc)
    layout back to plain NCHW (the consumers of each ``ReorderOutput``); None where this CPU's
    ONNX Runtime has no blocked layout at all (nothing to keep)."""

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the optimized graph is only read here, never deployed
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    if not any(n.op_type == "ReorderInput" for n in graph.node):
        return None
    reordered = {n.output[0] for n in graph.node if n.op_type == "ReorderOutput"}
    return sorted(n.op_type for n in graph.node if reordered & set(n.input))


def test_the_fused_network_keeps_onnx_runtimes_blocked_layout(tmp_path: Path) -> None:
    """With its shapes written out, the fused network's element-wise Add and Mul stay in ONNX
    Runtime's blocked layout: only the 16-channel variance (for Sqrt), the pixel shuffles
    (DepthToSpace) and the head's 3-channel full-resolution inputs leave it. Without the shapes, every gate's
    Mul round-trips (the reason ``export.weather`` writes them)."""
    config = WeatherNetConfig(width=16, max_channels=32, encoder_blocks=(0, 1, 1, 1), middle_blocks=1,
                              decoder_blocks=(0, 1, 1, 1))
    model = _randomised(WeatherNet(config))
    fused = fuse_for_inference(model)
    x = torch.rand(1, 3, 3 * MULTIPLE, 5 * MULTIPLE)
    with torch.no_grad():
        assert float((fused(x) - model(x)).abs().max()) < 1e-5
    for shapes in (True, False):
        export_onnx(fused, tmp_path / f"{shapes}.onnx", (1, 3, 64, 64), check_shape=(2, 3, 48, 80),
                    fp16_storage=False, symbolic_shapes=shapes, tolerance=1e-4)
    leaks = _blocked_layout_leaks(tmp_path / "True.onnx", tmp_path)
    if leaks is None:
        pytest.skip("this CPU's ONNX Runtime has no blocked (NCHWc) layout")
    assert not {"Mul", "Sub", "Div"} & set(leaks), leaks
    assert leaks.count("Add") == 1, leaks  # the head's: 3 channels at full resolution, J + R
    blocks = sum(config.encoder_blocks) + config.middle_blocks + sum(config.decoder_blocks)
    assert leaks.count("Sqrt") == 2 * blocks and leaks.count("DepthToSpace") == 4
    assert "Mul" in (_blocked_layout_leaks(tmp_path / "False.onnx", tmp_path) or [])


def test_the_conditioned_fused_network_keeps_the_blocked_layout_after_each_film(tmp_path: Path) -> None:
    """Model 3's FiLM scales and shifts are per sample, a broadcast Mul that leaves the blocked
    layout: one leak per FiLM (its Mul), and the stage after it back in the layout through the
    FiLM's identity copy. Without the copy every residual Add of the stage leaks too (33 here)."""
    config = WeatherNetConfig(width=16, max_channels=32, encoder_blocks=(0, 1, 1, 1), middle_blocks=1,
                              decoder_blocks=(0, 1, 1, 1), conditions=4, upsample="bilinear")
    model = _randomised(WeatherNet(config))
    fused = fuse_for_inference(model)
    x, w = torch.rand(2, 3, 3 * MULTIPLE, 5 * MULTIPLE), weather_onehot(["rain", "unknown"])
    with torch.no_grad():
        assert float((fused(x, w) - model(x, w)).abs().max()) < 1e-5
    export_onnx(fused, tmp_path / "c.onnx", (1, 3, 64, 64), check_shape=(2, 3, 48, 80), fp16_storage=False,
                symbolic_shapes=True, tolerance=1e-4, conditions=len(WEATHER_LABELS))
    leaks = _blocked_layout_leaks(tmp_path / "c.onnx", tmp_path)
    if leaks is None:
        pytest.skip("this CPU's ONNX Runtime has no blocked (NCHWc) layout")
    films = len(fused.encoder_film) + len(fused.decoder_film)
    assert leaks.count("Mul") == films and leaks.count("Add") == 1, leaks  # the FiLMs'; the head's J + R


def test_a_fused_network_is_not_fused_again() -> None:
    fused = fuse_for_inference(_randomised(WeatherNet(WeatherNetConfig(**TINY))))
    with pytest.raises(ValueError, match="already fused"):
        fuse_for_inference(fused)


# ------------------------------------------------------------------- model 3: the weather label
CONDITIONED = dict(TINY, conditions=4, upsample="bilinear")


def test_a_conditioned_network_starts_as_the_blind_one_for_every_label() -> None:
    """FiLM and the transmission shift are zero-initialised: before training, the label changes
    nothing, so a warm start from a blind network begins exactly where it was."""
    torch.manual_seed(0)
    model = WeatherNet(WeatherNetConfig(**CONDITIONED))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "film" not in name and "t_shift" not in name:
                p.add_(0.1 * torch.randn_like(p))
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        outputs = [model(x, weather_onehot([label] * 2)) for label in WEATHER_LABELS]
        assert all(torch.equal(outputs[0], o) for o in outputs[1:])
        assert torch.equal(model(x), outputs[WEATHER_LABELS.index("unknown")])  # None means unknown


def test_the_label_reaches_the_output_row_by_row() -> None:
    model = _randomised(WeatherNet(WeatherNetConfig(**CONDITIONED)))
    x = torch.rand(1, 3, 48, 64).expand(2, -1, -1, -1)
    with torch.no_grad():
        mixed = model(x, weather_onehot(["rain", "haze"]))
        rain, haze = model(x[:1], weather_onehot(["rain"])), model(x[:1], weather_onehot(["haze"]))
    assert torch.allclose(mixed[:1], rain, atol=1e-5) and torch.allclose(mixed[1:], haze, atol=1e-5)
    assert float((rain - haze).abs().max()) > 1e-3


def test_a_blind_network_refuses_a_label() -> None:
    with pytest.raises(ValueError, match="blind"):
        WeatherNet(WeatherNetConfig(**TINY))(torch.rand(1, 3, 32, 32), weather_onehot(["rain"]))


@pytest.mark.parametrize("upsample, refine", [("shuffle", 0), ("bilinear", 0), ("bilinear", 8)])
def test_the_conditioned_fused_network_exports_with_its_weather_input(tmp_path: Path, upsample: str,
                                                                       refine: int) -> None:
    """The export the service runs: fused, a second ONNX input ``weather`` (N, 4), a different
    label per image in the check, dynamic sides; parity within 1e-4 (with and without the
    full-resolution ``Refine`` stage and its dilated convolutions)."""
    model = _randomised(WeatherNet(WeatherNetConfig(**dict(CONDITIONED, upsample=upsample, refine=refine))))
    fused = fuse_for_inference(model)
    x, w = torch.rand(3, 3, 48, 80), weather_onehot(["rain", "snow", "unknown"])
    with torch.no_grad():
        assert float((fused(x, w) - model(x, w)).abs().max()) < 1e-5
    diff = export_onnx(fused, tmp_path / "w.onnx", (1, 3, 64, 64), check_shape=(3, 3, 5 * MULTIPLE, 7 * MULTIPLE),
                       fp16_storage=False, tolerance=1e-4, conditions=len(WEATHER_LABELS))
    assert diff <= 1e-4


def test_a_warm_start_adds_blocks_and_labels_without_changing_the_function() -> None:
    """adapt_state_dict: new blocks and FiLM start as the identity, so with the same upsampling the
    target computes exactly the source; shuffle -> bilinear keeps the mean sub-pixel filter."""
    source_config = WeatherNetConfig(**dict(TINY, encoder_blocks=(0, 1, 1, 1), decoder_blocks=(0, 1, 1, 1)))
    source = _randomised(WeatherNet(source_config))
    target_config = WeatherNetConfig(**dict(TINY, conditions=4))  # a block more at full resolution, labels
    target = WeatherNet(target_config).eval()
    missing = target.load_state_dict(adapt_state_dict(source.state_dict(), source_config, target_config),
                                     strict=False).missing_keys
    assert missing and all(k.startswith(("encoders.0.", "decoders.0.", "encoder_film", "decoder_film", "physical.t_shift"))
                           for k in missing)
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.allclose(target(x, weather_onehot(["rain"])), source(x), atol=1e-6)
    smooth = adapt_state_dict(source.state_dict(), source_config,
                              WeatherNetConfig(**dict(TINY, encoder_blocks=(0, 1, 1, 1), decoder_blocks=(0, 1, 1, 1),
                                                      upsample="bilinear")))
    shuffled = source.state_dict()["ups.0.0.weight"]
    assert torch.allclose(smooth["ups.0.0.weight"], shuffled.reshape(-1, 4, *shuffled.shape[1:]).mean(1))
    with pytest.raises(ValueError, match="add blocks"):
        adapt_state_dict(target.state_dict(), target_config, source_config)


def test_a_warm_start_adding_the_refine_stage_changes_the_output_by_little() -> None:
    """A refine stage added to a trained network starts near zero (not at zero: every layer gets a
    gradient from the first step), so the warm-started network begins close to where it was."""
    source = _randomised(WeatherNet(WeatherNetConfig(**CONDITIONED)))
    target_config = WeatherNetConfig(**dict(CONDITIONED, refine=8, refine_layers=5))
    target = WeatherNet(target_config).eval()
    missing = target.load_state_dict(adapt_state_dict(source.state_dict(), source.config, target_config),
                                     strict=False).missing_keys
    assert missing and all(k.startswith("refine.") for k in missing)
    x, w = torch.rand(1, 3, 48, 64), weather_onehot(["rain"])
    with torch.no_grad():
        change = float((target(x, w) - source(x, w)).abs().max())
    assert 0 < change < 0.05


def test_the_refine_stage_leaves_a_flat_image_flat() -> None:
    """Plain full-resolution convolutions give every pixel the same filter: no sub-pixel phase,
    so no mesh on a flat sky (away from the zero-padded border)."""
    model = _randomised(WeatherNet(WeatherNetConfig(**dict(CONDITIONED, refine=8, refine_layers=5))))
    with torch.no_grad():
        y = model.refine(torch.full((1, 3, 48, 48), 0.6), torch.ones(1, model.config.channels(0), 48, 48))
    assert float(y[..., 16:-16, 16:-16].std(dim=(-1, -2)).max()) < 1e-5
    assert float(y.abs().max()) > 0


def test_bilinear_upsampling_leaves_a_flat_image_flat() -> None:
    """The mesh of model 2: PixelShuffle gives each of the four output phases its own filter, so
    a flat input comes out with a 2-pixel pattern; bilinear upsampling of a flat map is flat."""
    for upsample, flat in (("shuffle", False), ("bilinear", True)):
        model = _randomised(WeatherNet(WeatherNetConfig(**dict(TINY, upsample=upsample))))
        with torch.no_grad():
            y = model.ups[0](torch.ones(1, model.config.channels(1), 16, 16))
        inner = y[..., 4:-4, 4:-4]
        assert bool((inner.std(dim=(-1, -2)) < 1e-5).all()) is flat, upsample
