"""The configuration: the original framework's YAML loads verbatim, every section validates with one-line errors, and
``--set`` overrides work on dotted keys."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from diffscale.cli.main import main
from diffscale.config import (
    TAGGED_SECTIONS,
    Config,
    GaussianFieldsData,
    MixtureData,
    build_model,
    config_from_dict,
    config_reference,
    load_config,
)
from diffscale.config.climate import ClimateData
from diffscale.data.climate import ClimateDataset
from diffscale.formulations import EDM, IDDPM, VE, VP
from diffscale.validation import ConfigError

REPO = Path(__file__).resolve().parents[1]

# The configuration of the original framework's documentation, character for character.
ORIGINAL_YAML = """\
diffusion:
  type: "EDM"
  sigma_data: 1.0
  sigma_min: 0.002
  sigma_max: 80.0
  rho: 7.0
  p_mean: -1.2
  p_std: 1.2
sampling:
  steps: 40
  sampler: "heun"
  s_churn: 40.0
  s_min: 0.05
  s_max: 50.0
  s_noise: 1.003
"""

ORIGINAL_VALUES = {
    "diffusion": {
        "type": "EDM",
        "sigma_data": 1.0,
        "sigma_min": 0.002,
        "sigma_max": 80.0,
        "rho": 7.0,
        "p_mean": -1.2,
        "p_std": 1.2,
    },
    "sampling": {"steps": 40, "sampler": "heun", "s_churn": 40.0, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.003},
}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str = ORIGINAL_YAML, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- the original framework's file ------------------------------------------------------------------------------
def test_original_yaml_loads_verbatim_with_its_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ORIGINAL_YAML))
    assert config.diffusion.model_dump() == ORIGINAL_VALUES["diffusion"]
    assert config.sampling.model_dump() == ORIGINAL_VALUES["sampling"]
    formulation = config.formulation()
    assert isinstance(formulation, EDM)
    assert formulation.params.sigma_data == 1.0
    settings = config.sampling.to_sampler_settings()
    assert (settings.steps, settings.solver, settings.s_churn) == (40, "heun", 40.0)
    assert (settings.s_min, settings.s_max, settings.s_noise) == (0.05, 50.0, 1.003)


def test_example_config_holds_the_original_sections() -> None:
    config = load_config(REPO / "configs" / "mixture_1d_edm.yaml")
    assert config.diffusion.model_dump() == ORIGINAL_VALUES["diffusion"]
    assert config.sampling.model_dump() == ORIGINAL_VALUES["sampling"]
    assert ORIGINAL_YAML in (REPO / "configs" / "mixture_1d_edm.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_example_config_loads(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    network = build_model(config.resolved_model(), config.data_shape(), config.learned_variance)
    assert network is not None
    if isinstance(config.data, ClimateData):  # file paths are relative to the repository root
        shared = REPO.parent / "shared" / "data"
        if not shared.is_dir():
            pytest.skip("real data directory ../shared/data is absent")
        folder = REPO
        if any(name.startswith("example_data/") for name in config.data.paths):
            # what `diffscale example-data` writes: the shared file's values (tests/test_examples.py checks it)
            (tmp_path / "example_data").mkdir()
            (tmp_path / "example_data" / "era5_t2m_uk_2019-03.nc").symlink_to(shared / "era5_t2m_uk_2019-03.nc")
            folder = tmp_path
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            data = ClimateDataset(config.data, "train")
        known = config.data_shape()
        if 0 in known:  # no crop: the whole grid's size is known once the data are read, as training reads it
            assert known[0] == data.shape[0]
            network = build_model(config.resolved_model(), data.shape, config.learned_variance)
        else:
            assert known == data.shape
        assert network.cond_channels == data.cond_channels
        return
    data = config.data.build()
    assert config.data_shape() == (getattr(data, "shape", None) or (data.dims,))


# -- defaults and descriptions --------------------------------------------------------------------------------
def test_empty_file_gives_working_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert isinstance(config.formulation(), EDM)
    assert config.data.build().dims == 1
    assert config.sampling.to_sampler_settings().steps >= 1
    assert config.output.dir is None


def _section_models() -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = [Config]
    for name, field in Config.model_fields.items():
        if name in TAGGED_SECTIONS:
            models.extend(TAGGED_SECTIONS[name].members.values())
        else:
            models.append(field.annotation)
    return models


@pytest.mark.parametrize("model", _section_models(), ids=lambda model: model.__name__)
def test_every_key_has_a_one_line_description(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
        assert "\n" not in field.description


def test_reference_lists_every_key_with_its_default() -> None:
    reference = config_reference()
    for model in _section_models()[1:]:
        for name in model.model_fields:
            assert f"| `{name}` |" in reference, name
    assert "| diffusion (type: EDM) | `sigma_data` | `0.5` |" in reference
    assert "| sampling | `s_max` | `.inf` |" in reference


@pytest.mark.parametrize(
    ("spelling", "cls"),
    [("edm", EDM), ("EDM", EDM), ("Edm", EDM), ("ve", VE), ("VP", VP), ("vp", VP), ("iddpm", IDDPM), ("iDDPM", IDDPM)],
)
def test_formulation_type_is_case_insensitive(spelling: str, cls: type) -> None:
    config = config_from_dict({"diffusion": {"type": spelling}})
    assert isinstance(config.formulation(), cls)
    assert config.diffusion.type == cls.name


def test_diffusion_without_type_is_edm() -> None:
    config = config_from_dict({"diffusion": {"sigma_data": 2.0}})
    assert isinstance(config.formulation(), EDM)
    assert config.diffusion.sigma_data == 2.0


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ORIGINAL_YAML), ["sampling.s_max=.inf", "diffusion.type=VE"])
    assert math.isinf(config.sampling.s_max)
    again = load_config(write(tmp_path, config.to_yaml(), "resolved.yaml"))
    assert again == config


# -- bad input: one line naming key, value and what is allowed ------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["diffusion.type=foo"], ["diffusion.type = 'foo': unknown formulation; allowed: VE, VP, EDM, iDDPM"]),
        (["sampling.sampler=rk4"], ["sampling.sampler", "'rk4'", "euler", "heun"]),
        (["diffusion.sigma_min=100"], ["sigma_min", "100", "sigma_max"]),
        (["diffusion.sigma_data=0"], ["diffusion.sigma_data = 0", "greater than 0"]),
        (["diffusion.sigma_data=-1.5"], ["diffusion.sigma_data = -1.5", "greater than 0"]),
        (["sampling.steps=0"], ["sampling.steps = 0", "greater than or equal to 1"]),
        (["sampling.steps=2.5"], ["sampling.steps = 2.5", "integer"]),
        (["sampling.s_churn=-1"], ["sampling.s_churn = -1", "greater than or equal to 0"]),
        (["sampling.s_noise=0"], ["sampling.s_noise = 0", "greater than 0"]),
        (["sampling.s_min=60"], ["s_min", "60", "s_max", "50"]),
        (["training.steps=abc"], ["training.steps = 'abc'", "integer"]),
        (["training.batch_size=0"], ["training.batch_size = 0", "greater than or equal to 1"]),
        (["training.threads=0"], ["training.threads = 0: must be an integer >= 1 or 'auto'"]),
        (["training.threads=-1"], ["training.threads = -1: must be an integer >= 1 or 'auto'"]),
        (["training.threads=true"], ["training.threads = True: must be an integer >= 1 or 'auto'"]),
        (["training.threads=all"], ["training.threads = 'all': must be an integer >= 1 or 'auto'"]),
        (["training.precision=fp8"], ["training.precision = 'fp8'", "'fp32', 'bf16', 'fp16' or 'auto'"]),
        (["model.arch=unet"], ["model.arch = 'unet': unknown architecture; allowed: mlp, ddpmpp, ncsnpp, adm"]),
        (["model.width=0"], ["model.width = 0", "greater than or equal to 1"]),
        (["model.embedding_dim=3"], ["model.embedding_dim = 3", "multiple of 2"]),
        (["data.kind=xarray"], ["data.kind = 'xarray'", "allowed: mixture, gaussian_fields"]),
        (["data.kind=gaussian_fields", "data.length_scale=0"], ["data.length_scale = 0", "greater than 0"]),
        (["data.kind=gaussian_fields", "data.height=2.5"], ["data.height = 2.5", "integer"]),
        (["data.preset=moons"], ["data.preset = 'moons'", "two_gaussians_1d", "ring_2d", "custom"]),
        (["diffusion=5"], ["diffusion = 5", "mapping"]),
    ],
)
def test_bad_values_give_one_line(tmp_path: Path, overrides: list[str], expected: list[str]) -> None:
    message = error_of(tmp_path, overrides=tuple(overrides))
    for part in expected:
        assert part in message, (part, message)


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, ORIGINAL_YAML + "  sigma_data: 1.0\n".replace("sigma_data", "s_cfg"))
    assert "s_cfg" in message and "steps" in message  # names the key and the allowed ones
    message = error_of(tmp_path, ORIGINAL_YAML + "optimizer:\n  lr: 1\n")
    assert "'optimizer'" in message and "diffusion" in message and "training" in message


def test_formulation_keys_belong_to_their_type(tmp_path: Path) -> None:
    message = error_of(tmp_path, "diffusion:\n  type: VP\n  sigma_data: 0.5\n")
    assert "diffusion" in message and "'sigma_data'" in message and "beta_d" in message


TWO_COMPONENTS = {"preset": "custom", "means": [-1, 1], "stds": [0.1, 0.2]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"preset": "custom"}, ["preset = 'custom' needs means and stds"]),
        ({"preset": "custom", "means": [[0, 0], [1, 1]], "stds": [0.1, 0.2, 0.3]}, ["data.stds", "2 entries"]),
        ({"preset": "custom", "means": [[0, 0], [1]], "stds": [0.1, 0.2]}, ["data.means", "same number"]),
        ({"preset": "custom", "means": [-1, 1], "stds": [0.1, -0.2]}, ["data.stds", "> 0"]),
        (
            {"preset": "custom", "means": [-1, 1], "stds": [0.1, 0.2], "weights": [1, 2, 3]},
            ["data.weights", "2 values"],
        ),
        ({"preset": "custom", "means": [-1, 1], "stds": [0.1, 0.2], "weights": [0, 0]}, ["data.weights", "not all 0"]),
        ({"preset": "ring_2d", "means": [0.0]}, ["means", "only used with preset = 'custom'"]),
        ({"preset": "custom", "means": [float("nan")], "stds": [0.1]}, ["data.means.0.0 = nan", "finite"]),
    ],
)
def test_custom_mixture_is_checked(data: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"data": data})
    for part in expected:
        assert part in str(caught.value), (part, str(caught.value))


def test_custom_mixture_builds() -> None:
    section = config_from_dict(
        {
            "data": {
                "preset": "custom",
                "means": [[0, 1], [2, 3], [4, 5]],
                "stds": [0.5, [0.1, 0.2], 1],
                "weights": [1, 1, 2],
            }
        }
    ).data
    assert isinstance(section, MixtureData)
    mixture = section.build()
    assert mixture.dims == 2
    assert mixture.weights.tolist() == [0.25, 0.25, 0.5]
    assert mixture.stds.tolist() == [[0.5, 0.5], [0.1, 0.2], [1.0, 1.0]]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_is_one_line_with_position(tmp_path: Path) -> None:
    message = error_of(tmp_path, "diffusion:\n  type: EDM\n sigma_data: [1.0\n")
    assert "YAML syntax error at line" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = error_of(tmp_path, "- diffusion\n- sampling\n")
    assert "top level must be a mapping" in message and "list" in message


# -- overrides ------------------------------------------------------------------------------------------------
def test_overrides_parse_yaml_scalars(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, ORIGINAL_YAML),
        ["training.steps=100", "training.learning_rate=1e-3", "training.grad_clip=null", "sampling.sampler=euler"],
    )
    assert config.training.steps == 100
    assert config.training.learning_rate == 1e-3
    assert config.training.grad_clip is None
    assert config.sampling.sampler == "euler"
    assert config.diffusion.sigma_data == 1.0  # untouched keys stay


def test_threads_and_precision_defaults_and_choices(tmp_path: Path) -> None:
    defaults = load_config(write(tmp_path, ORIGINAL_YAML))
    assert defaults.training.threads == "auto" and defaults.training.precision == "fp32"
    config = load_config(write(tmp_path, ORIGINAL_YAML), ["training.threads=3", "training.precision=auto"])
    assert config.training.threads == 3 and config.training.precision == "auto"


def test_changing_the_type_starts_from_the_new_defaults_in_any_order(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGINAL_YAML)
    for overrides in (["diffusion.type=vp", "diffusion.beta_d=10"], ["diffusion.beta_d=10", "diffusion.type=vp"]):
        config = load_config(path, overrides)
        assert isinstance(config.formulation(), VP)
        assert config.diffusion.beta_d == 10.0
        assert config.diffusion.beta_min == 0.1
    same_type = load_config(path, ["diffusion.type=edm"])
    assert same_type.diffusion.sigma_data == 1.0  # same formulation: the file's keys stay


def test_override_of_a_list(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, ORIGINAL_YAML),
        ["data.preset=custom", "data.means=[-2, 2]", "data.stds=[0.5, 0.5]", "data.weights=[1, 3]"],
    )
    assert config.data.build().weights.tolist() == [0.25, 0.75]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.stepz=5", ["training.stepz", "'stepz'", "allowed keys", "steps"]),
        ("trainin.steps=5", ["trainin.steps", "'trainin'", "diffusion", "training"]),
        ("diffusion.beta_d=1", ["diffusion.beta_d", "'beta_d'", "sigma_data"]),
        ("training.steps.max=5", ["training.steps.max", "no sub-keys"]),
        ("training.steps", ["KEY=VALUE"]),
        ("=5", ["KEY=VALUE"]),
        ("training..steps=5", ["dotted key"]),
    ],
)
def test_bad_overrides_name_the_key(tmp_path: Path, override: str, expected: list[str]) -> None:
    message = error_of(tmp_path, overrides=(override,))
    for part in expected:
        assert part in message, (part, message)


# -- model: against data: -------------------------------------------------------------------------------------
FIELDS = ["data.kind=gaussian_fields", "data.height=8", "data.width=12"]
SMALL_UNET = ["model.model_channels=8", "model.channel_mult=[1, 2]", "model.num_blocks=1", "model.attn_resolutions=[]"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model.arch=ddpmpp"],
            ["model.arch = 'ddpmpp' needs gridded data; data.kind = 'mixture' gives vectors", "use model.arch: mlp"],
        ),
        (["model.arch=adm", "data.preset=ring_2d"], ["model.arch = 'adm' needs gridded data", "dimension 2"]),
        (
            FIELDS,
            ["model.arch = 'mlp' needs vector data", "gives 1 x 8 x 12", "use model.arch: ddpmpp, ncsnpp, adm or edm2"],
        ),
        (
            ["model.arch=adm", "data.kind=gaussian_fields", "data.height=4"],
            ["data.height x data.width = 4 x 24", "model.arch = 'adm'", "too small", "at least 8"],
        ),
        (
            ["model.arch=ddpmpp", "model.pad_mode=none", "data.kind=gaussian_fields", "data.height=15"],
            ["15 x 24", "pad_mode='none'", "multiples of 4", "12 or 16"],
        ),
        (
            ["model.arch=ncsnpp", "model.in_channels=3", *FIELDS],
            ["model.in_channels = 3 does not match data.channels = 1"],
        ),
        (
            ["model.arch=ddpmpp", "model.learned_variance=true", *FIELDS],
            ["model.learned_variance = True", "iDDPM", "learned_variance: true"],
        ),
        (
            ["model.arch=ddpmpp", "model.out_channels=2", *FIELDS],
            ["model.out_channels = 2", "needs 1 output channels"],
        ),
        (["model.arch=ddpmpp", "model.cond_channels=2", *FIELDS], ["model.cond_channels = 2", "no conditioning"]),
        (["model.arch=adm", "model.label_dim=10", *FIELDS], ["model.label_dim = 10", "no labels"]),
    ],
)
def test_model_must_suit_the_data(tmp_path: Path, overrides: list[str], expected: list[str]) -> None:
    message = error_of(tmp_path, overrides=tuple(overrides))
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp", "adm"])
def test_unet_configs_load_with_overrides(tmp_path: Path, arch: str) -> None:
    config = load_config(
        write(tmp_path, ORIGINAL_YAML),
        [f"model.arch={arch.upper()}", *FIELDS, "data.channels=2", *SMALL_UNET, "model.dropout=0.0"],
    )
    assert config.model.arch == arch
    assert config.model.model_channels == 8 and tuple(config.model.channel_mult) == (1, 2)
    assert isinstance(config.data, GaussianFieldsData) and config.data_shape() == (2, 8, 12)
    resolved = config.resolved_model()
    assert resolved.in_channels == 2 and not resolved.learned_variance
    network = build_model(resolved, config.data_shape())
    assert network(torch.zeros(3, 2, 8, 12), torch.zeros(3)).shape == (3, 2, 8, 12)
    # The resolved configuration (tuples written as lists) validates back to the same sections.
    again = load_config(write(tmp_path, config.to_yaml(), "resolved.yaml"))
    assert again == config


def test_learned_variance_gives_twice_the_channels() -> None:
    config = config_from_dict(
        {
            "diffusion": {"type": "iDDPM", "learned_variance": True},
            "model": {"arch": "ddpmpp", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1},
            "data": {"kind": "gaussian_fields", "channels": 2, "height": 8, "width": 12},
        }
    )
    resolved = config.resolved_model()
    assert resolved.learned_variance and resolved.in_channels == 2
    network = build_model(resolved, config.data_shape(), config.learned_variance)
    assert network(torch.zeros(1, 2, 8, 12), torch.zeros(1)).shape == (1, 4, 8, 12)


def test_cli_refuses_a_model_that_does_not_suit_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, ORIGINAL_YAML)
    out = tmp_path / "run"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(path), "--out", str(out), "--no-progress", "--set", "model.arch=ddpmpp"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("diffscale: error: model.arch = 'ddpmpp' needs gridded data")
    assert sorted(tmp_path.rglob("*")) == before and not out.exists()
