"""Experiment and search-space files: every shipped YAML validates, and a corpus of broken files is
each rejected with the right key (and line) named, through the real CLI, with no traceback."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from catsith_sweep.cli import main
from catsith_sweep.config import apply_params, load_experiment
from catsith_sweep.config.schema import Experiment
from catsith_sweep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))

GOOD = """\
name: ok
trainer: lora
train: {max_steps: 10}
search:
  space:
    lora.rank: {type: int, low: 2, high: 8}
"""

# (experiment text, expected fragments of the message). Lines are 1-based.
BROKEN: list[tuple[str, list[str]]] = [
    ("name: x\n", [":1 trainer: required key is missing"]),
    ("name: x\ntrainer: gan\n", [":2 trainer:", "'gan'"]),
    ("name: 'bad name!'\ntrainer: lora\n", [":1 name:", "pattern"]),
    ("name: x\ntrainer: lora\ntrain:\n  learning_rat: 0.1\n", [":4 train.learning_rat: unknown key", "`learning_rate`"]),
    ("name: x\ntrainer: lora\ntrain:\n  batch_size: 0\n", [":4 train.batch_size:", "greater than or equal to 1", "got 0"]),
    ("name: x\ntrainer: lora\ntrain:\n  max_steps: 5\n  epochs: 2\n", ["Can't provide both `train.max_steps` and `train.epochs`"]),
    ("name: x\ntrainer: lora\ntrain:\n  lr_scheduler: linear\n", [":4 train.lr_scheduler:", "'linear'"]),
    ("name: x\ntrainer: lora\nlora:\n  rank: 0\n", [":4 lora.rank:", "got 0"]),
    ("name: x\ntrainer: lora\nlora:\n  rnak: 4\n", [":4 lora.rnak: unknown key", "did you mean `rank`"]),
    ("name: x\ntrainer: lora\nvae:\n  beta: 1\n", [":3 vae: section `vae` is for trainer `vae`, but trainer is `lora`"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    lora.rank: {type: int, low: 64, high: 8}\n",
     [":5 search.space.lora.rank: `low <= high` must hold, but got low=64, high=8"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    lora.rank: {type: int, low: 1, high: 8, step: 2, log: true}\n",
     [":5 search.space.lora.rank:", "`step` must be 1 when `log` is true"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    train.learning_rate: {type: float, low: 0, high: 1, log: true}\n",
     [":5 search.space.train.learning_rate:", "`low > 0` must hold"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    lora.rank: {type: uniform, low: 1, high: 2}\n",
     [":5 search.space.lora.rank:", "uniform"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    lora.rank: {type: categorical, values: []}\n",
     [":5 search.space.lora.rank.values:", "at least 1"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    lora.rnak: {type: int, low: 2, high: 8}\n",
     [":5 search.space.lora.rnak: `lora` has no key `rnak`; did you mean `rank`?"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    vae.beta: {type: float, low: 0.1, high: 1}\n",
     [":5 search.space.vae.beta: `vae` keys belong to trainer `vae`"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    tracking.uri: {type: fixed, value: x}\n",
     [":5 search.space.tracking.uri: cannot search over `tracking`"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    train.lr_scheduler: {type: categorical, values: [constant, linear]}\n",
     [":5 search.space.train.lr_scheduler: value 'linear' is not valid"]),
    ("name: x\ntrainer: lora\nsearch:\n  space:\n    lora.rank: {type: int, low: 0, high: 8}\n",
     [":5 search.space.lora.rank: value 0 is not valid for `lora.rank`"]),
    ("name: x\ntrainer: lora\nsearch:\n  space_file: nope\n", [":4 search.space_file: no search-space file `nope`"]),
    ("name: x\ntrainer: lora\nsearch:\n  metric: [sprite_fid, sprite_lpips]\n  mode: min\n",
     ["search.mode: one mode per metric"]),
    ("name: x\ntrainer: lora\nsearch:\n  metric: [sprite_fid, sprite_lpips]\n  mode: [min, min]\n"
     "  scheduler_metric: sprite_kid\n",
     ["search.scheduler_metric: must be one of the searched metrics ['sprite_fid', 'sprite_lpips']"]),
    ("name: x\ntrainer: lora\nsearch:\n  sampler: nsga2\n", ["search.sampler: nsga2 is multi-objective"]),
    ("name: x\ntrainer: lora\nresources:\n  gpu: 1.5\n", ["resources.gpu: a GPU count above 1 must be whole"]),
    ("name: x\ntrainer: lora\nresources:\n  gpu: -1\n", [":4 resources.gpu:", "got -1"]),
    ("name: x\ntrainer: lora\neval:\n  seeds: []\n", [":4 eval.seeds:", "at least 1"]),
    ("name: x\ntrainer: lora\nexport:\n  formats: [pickle]\n", [":4 export.formats[0]:", "'pickle'"]),
    ("name: x\ntrainer: lora\npromote:\n  category: Weapons\n", [":4 promote.category:", "'Weapons'"]),
    ("name: x\ntrainer: lora\nsurch: {}\n", [":3 surch: unknown key", "did you mean `search`"]),
    ("name: x\ntrainer: lora\ntrain: [1, 2]\n", [":3 train:", "valid dictionary"]),
    ("- just\n- a list\n", [":1: an experiment file must be a mapping"]),
    ("name: x\ntrainer: lora\n  bad: indent\n", ["invalid YAML"]),
    ("name: x\ntrainer: lora\ndescription: [1]\n", [":3 description:", "valid string"]),
    ("name: x\ntrainer: lora\nmodel:\n  bsae: builtin:catsith-tiny\n", [":4 model.bsae: unknown key", "`base`"]),
    ("name: x\ntrainer: lora\ndata:\n  synth_style: oil\n", [":4 data.synth_style:", "'oil'"]),
    ("name: x\ntrainer: lora\nfull:\n  vae_steps: 3\n", [":3 full: section `full` is for trainer `full`"]),
    ("name: x\ntrainer: lora\ndistill:\n  stesp: 3\n", [":4 distill.stesp: unknown key"]),
    ("name: x\ntrainer: lora\ntracking:\n  log_every_n_steps: 0\n", [":4 tracking.log_every_n_steps:", "got 0"]),
    ("name: x\ntrainer: lora\nsearch:\n  sampler: grid\n  space:\n    train.learning_rate: {type: float, low: 0.001, high: 0.01}\n",
     [":6 search.space.train.learning_rate: sampler `grid` needs finite values", "give it a `step`"]),
    ("name: x\ntrainer: lora\nsearch:\n  sampler: grid\n  num_samples: 7\n  space:\n    lora.rank: {type: categorical, values: [2, 4]}\n"
     "    train.learning_rate: {type: float, low: 0.001, high: 0.003, step: 0.001}\n",
     [":5 search.num_samples: sampler `grid` has 6 combinations, but num_samples is 7"]),
]


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / "experiments" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_experiments_validate(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("#"), "every shipped YAML opens with a comment block"
    assert "python -m catsith_sweep" in text.split("\n\n")[0] or "python -m catsith_sweep" in text[:800]
    assert main(["validate", str(path)]) == 0


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_are_commented(path: Path) -> None:
    assert path.read_text().startswith("#")


@pytest.mark.parametrize("text,fragments", BROKEN, ids=[str(i) for i in range(len(BROKEN))])
def test_broken_experiments_are_rejected(tmp_path: Path, text: str, fragments: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    flat = " ".join(err.split())
    for fragment in fragments:
        assert " ".join(fragment.split()) in flat, f"{fragment!r} not in:\n{err}"
    assert str(path) in err


def test_corpus_refuses_something_in_every_section() -> None:
    """A new section of the schema comes with a broken case that names it (and so with its message)."""
    named = set()
    for _, fragments in BROKEN:
        for fragment in fragments:
            match = re.match(r"(?::\d+ )?([a-z_]+)[.:\[]", fragment)
            if match:
                named.add(match.group(1))
    assert set(Experiment.model_fields) - named == set()


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ntrainer: lora\ntrain:\n  batch_size: 0\n  learning_rat: 1\nlora:\n  rank: -1\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert len(info.value.problems) == 3


def test_overrides_take_precedence_and_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    loaded = load_experiment(path, ["train.max_steps=77", "lora.alpha=8", "search.space.lora.rank.high=16"])
    assert loaded.experiment.train.max_steps == 77
    assert loaded.experiment.lora is not None and loaded.experiment.lora.alpha == 8
    assert loaded.space["lora.rank"].high == 16  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        load_experiment(path, ["train.batch_size=zero", "oops"])
    text = info.value.render()
    assert "command line `train.batch_size=zero` train.batch_size" in text
    assert "command line `oops`: an override must look like key.path=value" in text


def test_space_file_lines_and_trainer(tmp_path: Path) -> None:
    spaces = tmp_path / "search_spaces"
    spaces.mkdir()
    (spaces / "mine.yaml").write_text("# c\ntrainer: vae\nspace:\n  lora.rank: {type: int, low: 9, high: 2}\n")
    path = _write(tmp_path, "name: x\ntrainer: lora\nsearch:\n  space_file: mine\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    text = info.value.render()
    assert f"{spaces / 'mine.yaml'}:2 trainer: this space is for trainer `vae`" in text
    assert f"{spaces / 'mine.yaml'}:4 search.space.lora.rank: `low <= high` must hold" in text


def test_inline_space_overrides_file(tmp_path: Path) -> None:
    spaces = tmp_path / "search_spaces"
    spaces.mkdir()
    (spaces / "s.yaml").write_text("space:\n  lora.rank: {type: int, low: 2, high: 4}\n"
                                   "  lora.alpha: {type: fixed, value: 8}\n")
    path = _write(tmp_path, textwrap.dedent("""\
        name: x
        trainer: lora
        search:
          space_file: s
          space:
            lora.rank: {type: categorical, values: [16]}
        """))
    loaded = load_experiment(path)
    assert loaded.space["lora.rank"].type == "categorical"
    assert loaded.space["lora.alpha"].type == "fixed"


def test_apply_params_revalidates(tmp_path: Path) -> None:
    exp = load_experiment(_write(tmp_path, GOOD)).experiment
    tuned = apply_params(exp, {"lora.rank": 16, "train.learning_rate": 3e-4})
    assert tuned.lora is not None and tuned.lora.rank == 16 and tuned.train.learning_rate == 3e-4
    assert exp.lora is not None and exp.lora.rank == 4


def test_schema_command_prints_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "trainer" in schema["properties"]
    assert "LoRA rank" in json.dumps(schema)  # field docstrings become descriptions


def test_base_build_yaml_is_the_builtin_recipe() -> None:
    from catsith_sweep.trainers.base_build import builtin_base_experiment

    shipped = load_experiment(ROOT / "experiments" / "base_build.yaml").experiment
    assert shipped.model_dump(exclude={"description"}) == builtin_base_experiment().model_dump(
        exclude={"description"})


def test_tradeoff_plot_must_name_a_searched_key(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + "  plots:\n    - {x: lora.rnk, y: [sprite_fid]}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert "search.plots[0].x: `lora.rnk` is not a searched key; did you mean `lora.rank`?" in info.value.render()
    ok = _write(tmp_path, GOOD + "  plots:\n    - {x: lora.rank, y: [sprite_fid], log_x: true}\n", "ok.yaml")
    assert load_experiment(ok).experiment.search.plots[0].log_x


def test_augmentation_is_off_unless_the_experiment_turns_it_on() -> None:
    """One default, the schema's: a section built with no `enabled` leaves sprites untouched."""
    import numpy as np

    from catsith_sweep.config.schema import AugmentSection
    from catsith_sweep.data.augment import SpriteAugment

    rgba = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    strong = {"color_jitter_p": 1.0, "noise_p": 1.0, "brightness": 0.5, "hflip_p": 1.0}
    assert np.array_equal(SpriteAugment(AugmentSection(**strong), seed=0)(rgba, directions=1), rgba)
    changed = SpriteAugment(AugmentSection(enabled=True, **strong), seed=0)(rgba, directions=1)
    assert not np.array_equal(changed, rgba)
