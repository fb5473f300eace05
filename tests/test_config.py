"""The configuration layer: defaults, the shipped config files, every kind of error, overrides,
the save -> load round trip, the choices declared once, and the debug section."""
import dataclasses
import typing
from pathlib import Path

import pytest

from dstrain import config as config_module
from dstrain.config import (Config, ConfigError, InferenceConfig, ModelConfig, TrainConfig,
                            config_from_dict, config_to_dict, load_config, save_config)
from dstrain.graph import COUNTING_PRESETS
from dstrain.learning import InferenceOptions

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, text, name="x.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def raises(*fragments):
    """Context manager: a ConfigError whose one-line message contains every fragment."""
    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(ConfigError)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self._ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message, message
            for fragment in fragments:
                assert fragment in message, f"{fragment!r} not in {message!r}"
            return suppressed
    return _Check()


def test_defaults_are_valid():
    config = Config()
    assert config.model.hidden == [512] and config.inference.algorithm == "blend"
    assert config_from_dict({}) == config
    assert config_from_dict(None) == config


@pytest.mark.parametrize("name", ["words_debug.yaml", "words.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.model.order == 2 and config.inference.algorithm == "blend"
    assert isinstance(config.train.weight_decay, float) and config.train.weight_decay == 1e-4


def test_debug_config_values():
    config = load_config(CONFIGS / "words_debug.yaml")
    assert config.data.path == "data/words_debug.h5"
    assert (config.data.num_train, config.data.num_val, config.data.num_test) == (3000, 500, 500)
    assert config.model.hidden == [128]
    assert config.train.variant == "pretrain_joint" and 0 < config.train.pretrain_epochs < config.train.epochs
    assert config.run.dir == "runs/words_debug"


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 reads 1e-4 as a string; the config takes it as the number it means
    assert config_from_dict({"train": {"lr": "1e-4"}}).train.lr == 1e-4
    assert load_config(CONFIGS / "words_debug.yaml", ["train.weight_decay=1e-5"]).train.weight_decay == 1e-5


def test_full_config_values():
    config = load_config(CONFIGS / "words.yaml")
    assert config.data.path == "data/words.h5" and config.data.num_train == 10000
    assert config.model.hidden == [512]
    assert (config.train.variant, config.train.epochs, config.train.batch_size) == ("joint", 40, 100)


@pytest.mark.parametrize("text, fragments", [
    ("trian: {lr: 0.1}\n", ["unknown key 'trian'", "known keys: data, model, inference, train, run, debug"]),
    ("train: {lrr: 0.1}\n", ["unknown key 'train.lrr'", "known keys of train:", "lr,"]),
    ("train: {optimizer: sgdd}\n", ["train.optimizer", "sgd, adam", "'sgdd'"]),
    ("inference: {algorithm: bp}\n", ["inference.algorithm", "exact, converge, blend"]),
    ("train: {lr: abc}\n", ["train.lr expects a number", "'abc'"]),
    ("data: {path: 5}\n", ["data.path expects a non-empty string"]),
    ("data: {generate: 3}\n", ["data.generate expects true or false"]),
    ("model: {hidden: 64}\n", ["model.hidden expects a list of integers"]),
    ("model: {hidden: [64, 0]}\n", ["model.hidden[1] must be >= 1"]),
    ("model: {hidden: [8, 8, 8, 8]}\n", ["model.hidden expects 1 to 3 entries"]),
    ("train: {epochs: 0}\n", ["train.epochs must be >= 1", "got 0"]),
    ("train: {lr: 0}\n", ["train.lr must be > 0"]),
    ("train: {momentum: 1.0}\n", ["train.momentum must be in [0, 1)"]),
    ("train: {plateau_factor: 0}\n", ["train.plateau_factor must be in (0, 1)"]),
    ("model: {order: 4}\n", ["model.order must be in [0, 3]"]),
    ("train: {epochs: true}\n", ["train.epochs expects an integer", "True"]),
    ("train: {epochs: 2.5}\n", ["train.epochs expects an integer"]),
    ("train: {lr: true}\n", ["train.lr expects a number"]),
    ("train: {variant: pretrain_joint, epochs: 3, pretrain_epochs: 3}\n", ["train.pretrain_epochs must be <"]),
    ("train: 5\n", ["train expects a mapping"]),
    ("- 1\n- 2\n", ["expected a mapping"]),
])
def test_file_errors_name_file_and_key(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with raises(str(path), *fragments):
        load_config(path)


def test_bad_yaml_names_file(tmp_path):
    path = write(tmp_path, "train:\n  lr: [0.1\n")
    with raises(str(path), "invalid YAML"):
        load_config(path)


def test_missing_file(tmp_path):
    with raises(str(tmp_path / "nope.yaml"), "no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_and_empty_section_give_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "train:\n", "y.yaml")) == Config()


def test_ints_accepted_for_floats(tmp_path):
    config = load_config(write(tmp_path, "train: {lr: 1, weight_decay: 0}\n"))
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert isinstance(config.train.weight_decay, float)


def test_direct_construction_validates():
    with raises("train.optimizer", "sgd, adam"):
        TrainConfig(optimizer="rmsprop")
    with raises("model.order"):   # model keys are checked once the model class is known
        Config(model=ModelConfig(order=-1))
    with raises("inference.eps must be > 0"):
        InferenceConfig(eps=0)
    assert Config(inference=InferenceConfig(algorithm="exact"), model=ModelConfig(order=1)).model.order == 1
    assert Config(train={"lr": 0.2}).train.lr == 0.2


def test_overrides_of_each_type_apply():
    config = load_config(CONFIGS / "words_debug.yaml", overrides=[
        "train.lr=0.1", "model.hidden=[64, 32]", "train.optimizer=adam", "data.generate=false",
        "train.max_steps=3", "data.path=other.h5"])
    assert config.train.lr == 0.1
    assert config.model.hidden == [64, 32]
    assert config.train.optimizer == "adam"
    assert config.data.generate is False
    assert config.train.max_steps == 3
    assert config.data.path == "other.h5"
    # the rest comes from the file
    assert config.train.epochs == load_config(CONFIGS / "words_debug.yaml").train.epochs


def test_override_fixes_cross_field_error(tmp_path):
    path = write(tmp_path, "train: {variant: pretrain_joint, pretrain_epochs: 25}\n")  # > 20 epochs
    assert load_config(path, ["train.epochs=30"]).train.epochs == 30


def test_override_of_missing_section(tmp_path):
    path = write(tmp_path, "data: {num_train: 5}\n")
    assert load_config(path, ["run.seed=7"]).run.seed == 7


@pytest.mark.parametrize("override, fragments", [
    ("train.lr", ["--set train.lr:", "section.key=value"]),
    ("train=5", ["--set train=5:", "section.key=value"]),
    ("train.lrr=0.1", ["--set train.lrr=0.1:", "unknown key 'train.lrr'", "known keys of train"]),
    ("trian.lr=0.1", ["--set trian.lr=0.1:", "unknown key 'trian'"]),
    ("train.lr=abc", ["--set train.lr=abc: train.lr expects a number, got 'abc'"]),
    ("train.optimizer=rmsprop", ["--set train.optimizer=rmsprop:", "train.optimizer", "sgd, adam"]),
    ("train.epochs=true", ["--set train.epochs=true:", "train.epochs expects an integer"]),
    ("model.hidden=[64,", ["--set model.hidden=[64,:", "invalid YAML"]),
    ("model.order=9", ["--set model.order=9:", "model.order must be in [0, 3]"]),
    ("model.colour=red", ["--set model.colour=red:", "unknown key 'model.colour'", "pairwise_shared"]),
])
def test_bad_overrides_name_the_override(override, fragments):
    with raises(*fragments):
        load_config(CONFIGS / "words_debug.yaml", [override])


def test_error_from_file_names_file_not_override(tmp_path):
    path = write(tmp_path, "train: {lr: -1}\n")
    with raises(str(path), "train.lr must be > 0") as info:
        load_config(path, ["train.epochs=3"])
    assert "--set" not in str(info.value)


def test_save_load_round_trip(tmp_path):
    config = load_config(CONFIGS / "words_debug.yaml", ["model.hidden=[64, 32]", "train.weight_decay=1.0e-10",
                                                        "train.optimizer=adam", "inference.tol=0"])
    path = tmp_path / "run" / "config.yaml"
    save_config(config, path)
    again = load_config(path)
    assert again == config
    assert config_to_dict(again) == config_to_dict(config)
    assert list(config_to_dict(config)) == ["data", "model", "inference", "train", "run", "debug"]
    assert list(config_to_dict(config)["train"])[:3] == ["variant", "epochs", "pretrain_epochs"]
    assert type(again.train.weight_decay) is float and type(again.inference.tol) is float


def test_config_from_dict_source():
    with raises("checkpoint x:", "unknown key 'model.depth'"):
        config_from_dict({"model": {"depth": 3}}, source="checkpoint x")
    assert config_from_dict(config_to_dict(Config())) == Config()


SECTIONS = [typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
            if f.name != "model"]
CHOICES = [(section, f.name, typing.get_args(typing.get_type_hints(section)[f.name]))
           for section in SECTIONS for f in dataclasses.fields(section)
           if typing.get_origin(typing.get_type_hints(section)[f.name]) is typing.Literal]


def test_the_choices_are_literal_types_checked_by_one_check():
    names = {f"{section.SECTION}.{name}" for section, name, _ in CHOICES}
    assert {"inference.algorithm", "inference.counting_numbers", "train.variant",
            "train.optimizer", "train.batching", "run.dtype", "run.communicator", "run.device",
            "run.cuda_aware_mpi"} <= names
    for section, name, choices in CHOICES:
        for choice in choices:
            assert getattr(section(**{name: choice}), name) == choice
        for wrong in ("no-such-choice", 1, None):
            with raises(f"{section.SECTION}.{name} must be one of {', '.join(choices)}", repr(wrong)
                        if isinstance(wrong, str) else str(wrong)):
                section(**{name: wrong})


def test_counting_numbers_are_the_engines_presets():
    assert typing.get_args(config_module.CountingNumbers) == COUNTING_PRESETS
    assert "trw" in COUNTING_PRESETS and InferenceConfig(counting_numbers="trw").counting_numbers == "trw"


def test_inference_options_are_the_config_section_plus_local():
    section = load_config(CONFIGS / "words_debug.yaml", ["inference.algorithm=converge",
                                                         "inference.tol=1e-6"]).inference
    options = InferenceOptions.from_config(section)
    assert isinstance(options, InferenceConfig)
    assert dataclasses.asdict(options) == dataclasses.asdict(section)
    assert [f.name for f in dataclasses.fields(InferenceOptions)] == \
        [f.name for f in dataclasses.fields(InferenceConfig)]
    assert options.but(algorithm="local").algorithm == "local"       # the learner's own choice
    with raises("inference.algorithm must be one of exact, converge, blend,", "'local'"):
        section.but(algorithm="local")                                # not a config choice
    with raises("inference.algorithm must be one of exact, converge, blend, local", "'bp'"):
        InferenceOptions(algorithm="bp")
    with raises("inference.eps must be > 0"):
        options.but(eps=0)


def test_the_debug_section_is_off_by_default_and_set_like_any_other():
    debug = Config().debug
    assert (debug.fault_step, debug.fault_rank, debug.emulate_kernels) == (0, 0, False)
    config = load_config(CONFIGS / "words_debug.yaml", ["debug.fault_step=3", "debug.fault_rank=1",
                                                        "debug.emulate_kernels=true"])
    assert (config.debug.fault_step, config.debug.fault_rank, config.debug.emulate_kernels) == \
        (3, 1, True)
    with raises("--set debug.fault_step=-1:", "debug.fault_step must be >= 0"):
        load_config(CONFIGS / "words_debug.yaml", ["debug.fault_step=-1"])
    with raises("--set debug.emulate_kernels=2:", "debug.emulate_kernels expects true or false"):
        load_config(CONFIGS / "words_debug.yaml", ["debug.emulate_kernels=2"])
    with raises("unknown key 'debug.fault'", "fault_step, fault_rank, emulate_kernels"):
        load_config(CONFIGS / "words_debug.yaml", ["debug.fault=1"])
