"""Search-space files: the shipped ones are valid for every method, and errors name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dymlbench.config import DATASETS, resolve_config
from dymlbench.registry import list_methods
from dymlbench.sweep.space import SpaceError, load_space

SWEEPS = Path(__file__).parents[2] / "sweeps"


@pytest.mark.parametrize("method", list_methods())
def test_every_method_has_a_valid_space_for_every_dataset(method: str) -> None:
    path = SWEEPS / f"{method}.yaml"
    assert path.is_file(), f"sweeps/{method}.yaml is missing"

    for dataset in DATASETS:
        space = load_space(path, base=resolve_config(method=method, dataset=dataset))

        keys = {param.key for param in space.swept}
        assert {"optim.lr", "optim.weight_decay", "model.embedding_dim"} <= keys
        assert any(key.startswith("method.") for key in keys)
        assert len(space.distributions()) == len(space.swept)


def test_no_space_file_without_a_method() -> None:
    assert {path.stem for path in SWEEPS.glob("*.yaml")} == set(list_methods())


def _load(tmp_path: Path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return load_space(path, base=resolve_config(method="cosface", dataset="toy"))


GOOD = "model.embedding_dim: {type: categorical, choices: [64, 128]}\n"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("optim.weight_decy: 0.1", "unknown key `optim.weight_decy`; did you mean"),
        ("method.margn: {type: float, low: 0.1, high: 0.2}", "did you mean `method.margin`?"),
        ("optim.lr: {type: gaussian, low: 0, high: 1}", "must have a `type` of float, int or"),
        ("optim.lr: {type: float, low: 0.1, hi: 0.2}", "unknown field `hi`"),
        ("optim.lr: {type: float, low: 0.2, high: 0.1}", "must be <= its `high` (0.1)"),
        ("optim.weight_decay: {type: float, low: 0.0, high: 0.1, log: true}", "> 0 on a log"),
        ("optim.lr: {type: float, low: 1.0e-3, high: 0.1, log: true, step: 0.01}", "both"),
        ("optim.epochs: {type: int, low: 1.5, high: 3}", "must be an integer, but got 1.5"),
        ("method.margin: {type: float, low: 0.1, high: 1.5}", "`method.margin` must be in [0, 1)"),
        ("optim.lr: {type: float, low: -1.0, high: 0.1}", "`optim.lr` must be > 0"),
        ("optim.optimizer: {type: categorical, choices: []}", "must list its `choices`"),
        ("optim.optimizer: {type: categorical, choices: [adam, adamx]}", "'adamx'"),
        ("optim.epochs: many", "`optim.epochs` must be an integer, but got 'many'"),
        ("engine.seed: 3", "`engine.seed` cannot be swept"),
        ("data.val_fraction: 0.3", "use `--val-fraction`"),
        (
            "model.embedding_dim: 32",
            "`model.embedding_dim` must appear once, but it is also on line 2",
        ),
    ],
    ids=[
        "unknown-key",
        "unknown-method-key",
        "unknown-type",
        "unknown-field",
        "low-above-high",
        "log-of-zero",
        "log-and-step",
        "int-bounds",
        "out-of-range",
        "below-bound",
        "no-choices",
        "bad-choice",
        "bad-fixed",
        "seed",
        "val-fraction",
        "duplicate",
    ],
)
def test_a_bad_entry_is_an_error_naming_the_file_and_line(
    tmp_path: Path, entry: str, expected: str
) -> None:
    text = "# a comment line\n" + GOOD + entry + "\n"

    with pytest.raises(SpaceError) as raised:
        _load(tmp_path, text)

    message = " ".join(str(raised.value).split())
    assert f"{tmp_path / 'space.yaml'}, line 3" in message
    assert expected in message


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="line 1: the file must be a mapping"):
        _load(tmp_path, "- optim.lr\n")


def test_entries_become_distributions_fixed_values_and_overrides(tmp_path: Path) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    path = tmp_path / "csl.yaml"
    path.write_text(
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "optim.classes_per_batch: {type: int, low: 8, high: 32, step: 8}\n"
        "method.margins: {type: categorical, choices: [[0.25, 0.35, 0.45], [0.1, 0.2, 0.3]]}\n"
        "optim.epochs: 7\n",
        encoding="utf-8",
    )

    space = load_space(path, base=resolve_config(method="csl", dataset="toy"))

    distributions = space.distributions()
    assert distributions["optim.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert distributions["optim.classes_per_batch"] == IntDistribution(8, 32, step=8)
    assert distributions["method.margins"] == CategoricalDistribution(
        ("[0.25, 0.35, 0.45]", "[0.1, 0.2, 0.3]")
    )
    assert space.fixed() == {"optim.epochs": 7}
    overrides = space.overrides({"method.margins": "[0.1, 0.2, 0.3]", "optim.lr": 0.001})
    assert overrides == {"method.margins": [0.1, 0.2, 0.3], "optim.lr": 0.001}


def test_the_default_space_is_found_from_outside_the_checkout(tmp_path, monkeypatch) -> None:
    from dymlbench.sweep.cli import _default_space

    monkeypatch.chdir(tmp_path)
    found = _default_space("msa")
    assert found.is_absolute() and found.is_file() and found.name == "msa.yaml"
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "msa.yaml").write_text("optim.lr: 0.01\n")
    assert _default_space("msa") == Path("sweeps") / "msa.yaml"
