import pytest

from fpar.config import ExperimentConfig, load_config, parse_override, save_config, to_dict, valid_keys
from fpar.errors import FparError


def test_defaults_and_overrides_types():
    cfg = load_config(
        None,
        [
            "optim.lr=1e-4",
            "sched.milestones=[25,75]",
            "model.cam=false",
            "init.from=runs/a",
            "data.train_subjects=[S1,S3]",
            "seed=3",
        ],
    )
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.sched.milestones == [25, 75]
    assert cfg.model.cam is False
    assert cfg.init.from_ == "runs/a"
    assert cfg.data.train_subjects == ["S1", "S3"]
    assert cfg.seed == 3


def test_required_keys_exist():
    keys = set(valid_keys())
    for k in [
        "data.root",
        "data.frames",
        "data.input_size",
        "model.ego_rnn.cam",
        "data.gtea61.test_subjects",
        "init.from",
        "optim.lr",
        "optim.weight_decay",
        "sched.milestones",
        "sched.gamma",
        "train.epochs",
        "train.batch_size",
        "seed",
        "out",
    ]:
        assert k in keys


def test_unknown_key_suggests_closest():
    with pytest.raises(FparError, match="did you mean 'optim.lr'"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(FparError, match="did you mean 'train.epochs'"):
        load_config(None, ["train.epoch=3"])


def test_bad_values_are_one_line_errors():
    with pytest.raises(FparError, match="expects an integer"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(FparError, match="choose one of"):
        load_config(None, ["model.name=vit"])
    with pytest.raises(FparError, match="key=value"):
        parse_override("optim.lr")


def test_the_config_bounds_draw_pool_by_the_transforms_draw_count():
    """config.py cannot import the data layer, so it keeps the count of training draws as a number: it must be
    the transforms' own, or data.draw_pool's range would be wrong."""
    from fpar.config import TRAIN_DRAWS
    from fpar.data.transforms import DRAWS

    assert TRAIN_DRAWS == DRAWS == 40


def test_yaml_extends_and_roundtrip(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("name: a\noptim: {lr: 0.01}\ntrain: {epochs: 5, batch_size: 2}\n")
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base.yaml\nname: b\ntrain: {epochs: 7}\ninit: {from: x}\n"
        "data: {frames: 16}\nsched: {gamma: '${optim.lr}'}\n"
    )
    cfg = load_config(child)
    assert (cfg.name, cfg.optim.lr, cfg.train.epochs, cfg.train.batch_size, cfg.init.from_) == ("b", 0.01, 7, 2, "x")
    out = tmp_path / "saved.yaml"
    save_config(cfg, out)
    assert "from: x" in out.read_text()
    assert to_dict(load_config(out)) == to_dict(cfg)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: {epochs: [\n")
    with pytest.raises(FparError, match="bad.yaml"):
        load_config(p)
    with pytest.raises(FparError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_packaged_config_loads():
    from pathlib import Path

    import fpar

    root = Path(fpar.__file__).parent / "configs"
    files = sorted(p for p in root.rglob("*.yaml") if "grids" not in p.parts and p.parent.name != "paper")
    assert len(files) >= 8
    for f in files:
        assert isinstance(load_config(f), ExperimentConfig)


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.eval_every=0", "at least 1"),
        ("seed=-1", "at least 0"),
        ("model.dropout=1.5", r"\[0, 1\)"),
        ("train.device=gpu", "train.device"),
        ("data.frames=.inf", "finite"),
        ("optim.lr=-1", "at least"),
    ],
)
def test_range_validation(override, match):
    with pytest.raises(FparError, match=match):
        load_config(None, [override])
