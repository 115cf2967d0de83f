"""Config validation names the key and file; the run id is a pinned hash of the whole config."""
from pathlib import Path

import pytest

from slimlab.config import ExperimentConfig, build_config, config_hash, load_config, training_hash
from slimlab.errors import ConfigError

# Pinned: if this changes, old stores would be silently re-keyed. Change it only with a SCHEMA_VERSION bump.
# Schema 10 (issue 19: train.distill_weight, train.distill_mirrored and train.branches removed); was cc2f496c213f97eb.
GOLDEN_DEFAULT_HASH = "c5bb9c60fd7ce4a2"


def test_golden_hash_of_default_config():
    assert config_hash(ExperimentConfig(), device="cpu") == GOLDEN_DEFAULT_HASH


def test_the_run_id_ignores_names_and_search_paths_but_not_the_device():
    base = build_config({"name": "study-a:float"})
    assert config_hash(build_config({"name": "renamed:other-label"}), "cpu") == config_hash(base, "cpu")
    assert config_hash(build_config({"data": {"root": ["/elsewhere"], "download": True}}), "cpu") == config_hash(base, "cpu")
    assert config_hash(base, "cuda") != config_hash(base, "cpu")  # train.device auto: resolved where the run executes
    assert config_hash(build_config({"train": {"device": "cpu"}}), "cuda") == config_hash(base, "cpu")
    amp_off = build_config({"train": {"amp": False}})
    assert config_hash(amp_off, "cuda") != config_hash(base, "cuda")  # a different precision on the GPU


def test_the_run_id_is_the_same_on_a_cpu_with_native_bf16_and_one_without(monkeypatch, tmp_path):
    """A login node without AVX512-BF16 plans the id a compute node with it records: the host is never probed. The
    probe is replaced wherever slimlab holds it (its module and every module that imported the name), and the ids are
    those a study's plan computes."""
    import sys

    import slimlab.cpu_features  # noqa: F401  (loaded, so that their bindings of the probe are replaced too)
    import slimlab.train  # noqa: F401
    from slimlab.plan import load_study, plan_stages

    config = build_config({"train": {"cpu_bf16": True}})
    study = tmp_path / "s.yaml"
    study.write_text("name: bf16\nset:\n  train: {cpu_bf16: true, device: cpu}\ngrid:\n  seed: [0, 1]\n")
    ids = set()
    for native in (True, False):
        for module in [m for name, m in list(sys.modules.items()) if name.startswith("slimlab") and hasattr(m, "cpu_has_native_bf16")]:
            monkeypatch.setattr(module, "cpu_has_native_bf16", lambda native=native: native)
        planned = tuple(sorted(stage.id for stage in plan_stages(load_study(study)).runs) + [t.key for t in plan_stages(load_study(study)).trainings])
        ids.add((config_hash(config, "cpu"), training_hash(config, "cpu"), planned))
    assert len(ids) == 1 and len(next(iter(ids))[2]) == 4  # two runs, two trainings
    assert config_hash(config, "cpu") != config_hash(build_config({}), "cpu")  # asking for bf16 is still another run


def test_a_moved_or_copied_dataset_is_the_same_run_and_changed_contents_are_not(tmp_path):
    import shutil

    folder = tmp_path / "a" / "photos"
    for cls, payload in (("cat", b"x"), ("dog", b"y")):
        (folder / cls).mkdir(parents=True)
        (folder / cls / "1.png").write_bytes(payload)
    original = config_hash(build_config({"data": {"name": "imagefolder", "path": str(folder)}}), "cpu")
    copy = tmp_path / "b" / "renamed"
    shutil.copytree(folder, copy)  # new path, new modification times, same files
    assert config_hash(build_config({"data": {"name": "imagefolder", "path": str(copy)}}), "cpu") == original
    (copy / "dog" / "1.png").write_bytes(b"z")
    assert config_hash(build_config({"data": {"name": "imagefolder", "path": str(copy)}}), "cpu") != original


def test_hash_covers_defaults_and_every_field():
    base = ExperimentConfig()
    assert config_hash(build_config({"train": {"epochs": 20}})) == config_hash(base)  # explicit default == implicit
    assert config_hash(build_config({"train": {"label_smoothing": 0.0}})) != config_hash(base)
    assert config_hash(build_config({"seed": 1})) != config_hash(base)


def test_schedule_limits_are_checked_against_epochs():
    with pytest.raises(ConfigError, match=r"uncropped_final_epochs \(30\) exceeds train.epochs \(20\)"):
        build_config({"train": {"uncropped_final_epochs": 30}})


@pytest.mark.parametrize("key, value, what", [("distill_weight", 0.5, "self-distillation"),
                                              ("distill_mirrored", False, "self-distillation"),
                                              ("branches", "none", "training branches")])
def test_a_removed_key_gets_one_line_saying_so_even_beside_other_problems(tmp_path, key, value, what):
    path = tmp_path / "old.yaml"
    path.write_text(f"train:\n  epochz: 3\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: train.{key}: removed in issue 19 with {what}") and "delete the key" in message
    assert "\n" not in message


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: train\.epochz: unknown key"):
        load_config(path)


@pytest.mark.parametrize("override, key", [
    ("train.lr=-0.1", "train.lr"),
    ("train.epochs=three", "train.epochs"),
    ("train.schedule=linear", "train.schedule"),
    ("data.val_size=-5", "data.val_size"),
    ("measure.batch_sizes=[0]", "measure.batch_sizes"),
    ("model.name=resnet21", "model.name"),
    ("data.name=imagenet", "data.name"),
    ("train.milestones=[0.8,0.2]", "train.milestones"),
    ("data.options.image_sise=64", "data.options image_sise"),  # a typo in a dataset option is not ignored
])
def test_bad_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def test_impossible_combination_fails():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config(overrides=["train.epochs=2", "train.warmup_epochs=5"])


def test_overrides_are_typed_yaml():
    cfg = load_config(overrides=["train.epochs=5", "train.nesterov=false", "measure.batch_sizes=[1, 8]", "train.lr=1e-2"])
    assert cfg.train.epochs == 5 and cfg.train.nesterov is False and cfg.measure.batch_sizes == [1, 8] and cfg.train.lr == 0.01


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(overrides=["train.epochs"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(overrides=["model.name=@x"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_unknown_step_kind_fails_before_running():
    with pytest.raises(ConfigError, match="unknown kind"):
        build_config({"steps": [{"kind": "sparsify"}]})


def test_configs_are_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(Exception):
        cfg.train.epochs = 3


def test_list_items_can_be_overridden():
    raw = {"steps": [{"kind": "prune", "amount": 0.5}]}
    from slimlab.config import apply_overrides
    assert apply_overrides(raw, ["steps.0.amount=0.8"])["steps"][0]["amount"] == 0.8
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(raw, ["steps.3.amount=0.8"])


def test_the_run_id_follows_the_contents_of_the_files_a_config_names(tmp_path):
    import torch

    from slimlab.config import training_hash
    from slimlab.models import create_model

    checkpoint = tmp_path / "mine.pt"
    torch.manual_seed(0)
    torch.save(create_model("resnet20").state_dict(), checkpoint)
    config = build_config({"model": {"name": "resnet20", "weights": str(checkpoint)}, "train": {"epochs": 0}})
    before = config_hash(config), training_hash(config)
    assert config_hash(config) == before[0]  # stable while the file is unchanged
    torch.manual_seed(1)
    torch.save(create_model("resnet20").state_dict(), checkpoint)  # the user retrained: same path, new weights
    after = config_hash(config), training_hash(config)
    assert after[0] != before[0] and after[1] != before[1]

    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    (folder / "1.png").write_bytes(b"x")
    images = build_config({"data": {"name": "imagefolder", "path": str(tmp_path / "photos")}})
    first = config_hash(images)
    (folder / "2.png").write_bytes(b"y")
    assert config_hash(images) != first


def test_an_empty_file_is_refused_not_run_with_every_default(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="empty.yaml: the file is empty"):
        load_config(empty)


def test_a_study_file_given_to_run_says_to_use_study(tmp_path):
    study = tmp_path / "grid.yaml"
    study.write_text("name: g\nbase: base.yaml\ngrid: {seed: [0, 1]}\n")
    with pytest.raises(ConfigError, match=r"a study file \(it has base, grid\), not an experiment: run it with `slimlab study"):
        load_config(study)


def test_a_training_subset_smaller_than_a_batch_is_refused_naming_both():
    with pytest.raises(ConfigError, match=r"data.train_subset \(10\) is smaller than train.batch_size \(16\)"):
        build_config({"data": {"train_subset": 10}, "train": {"batch_size": 16}})
    build_config({"data": {"train_subset": 10}, "train": {"batch_size": 16, "epochs": 0}})  # no training: nothing to batch


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_shortened_to_one_epoch_works_or_names_only_the_conflicting_keys(path):
    from slimlab.config import STUDY_ONLY_KEYS, read_yaml_mapping
    from slimlab.plan import load_study

    is_study = bool(STUDY_ONLY_KEYS & set(read_yaml_mapping(path, "example")))
    try:
        (load_study if is_study else load_config)(path, ["train.epochs=1"])
    except ConfigError as exc:
        text = str(exc)
        assert "{" not in text and len(text) < 400, text  # not the whole train section
        assert "--set train.warmup_epochs=1" in text or "--set train.uncropped_final_epochs=1" in text, text
