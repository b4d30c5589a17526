"""``collect --features-for``: examples added after a collection are scored with the pool on the replayed
reference run; a copy of a pool example gets that example's scores (the oracle), the pool's TracIn columns
are the collection's, and the extended runs carry a curriculum with the new examples through to ``compare``."""

import json

import numpy as np
import pytest

from bayes_simfluence import cli
from bayes_simfluence.collect import CollectConfig, OptimConfig, collect
from bayes_simfluence.collect.added_examples import added_path_for, collect_added
from bayes_simfluence.runs import Runs
from bayes_simfluence.score_files import load_scores, scores_path_for

from collect_fixtures import sentiment_files, tiny_bert, write_jsonl

COPIED = (0, 3)  # pool examples the added file repeats (new ids, same text and label)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    directory = tmp_path_factory.mktemp("added")
    train, test = sentiment_files(directory)
    model = tiny_bert(directory, dropout=0.1)  # dropout on: the replay must follow the run's noise stream
    config = CollectConfig(model=str(model), train=str(train), test=str(test), id_field="id", runs=2,
                           batch_size=4, epochs=2, optim=OptimConfig(lr=0.1), scores=("tracin", "influence"),
                           score_params="all", reference_run=1)
    collect(config, directory / "runs.npz", progress=False, threads=1)
    pool = [json.loads(line) for line in train.read_text().splitlines()]
    added = [{**pool[i], "id": f"copy{i}"} for i in COPIED] + [{"id": "fresh", "text": "an utterly joyless sequel",
                                                                 "label": 0}]
    new = write_jsonl(directory / "new.jsonl", added)
    runs, path = collect_added(config, directory / "runs.npz", new, progress=False, threads=1)
    return {"dir": directory, "config": config, "train": train, "test": test, "model": model, "new": new,
            "runs": runs, "path": path}


def test_added_examples_extend_the_pool_and_no_run_uses_them(collected):
    original, extended = Runs.load(collected["dir"] / "runs.npz"), Runs.load(collected["path"])
    assert collected["path"] == collected["dir"] / "runs+new.npz"
    assert extended.n_train == original.n_train + 3
    assert list(extended.train_ids[original.n_train:]) == ["copy0", "copy3", "fresh"]
    np.testing.assert_array_equal(extended.curricula, original.curricula)
    np.testing.assert_array_equal(extended.losses, original.losses)
    assert extended.curricula.max() < original.n_train
    assert extended.meta["added_examples"] == {"source": str(collected["new"]), "first_index": 12, "count": 3}


@pytest.mark.parametrize("method", ["tracin", "influence"])
def test_a_copied_example_gets_its_original_scores(collected, method):
    original = load_scores(scores_path_for(collected["dir"] / "runs.npz"), method)
    extended = load_scores(scores_path_for(collected["path"]), method)
    n = original.scores.shape[-1]
    assert extended.scores.shape == original.scores.shape[:-1] + (n + 3,)
    np.testing.assert_array_equal(extended.checkpoint_steps, original.checkpoint_steps)
    scale = np.abs(extended.scores).max()
    # same text and label, same gradient: the same column at every checkpoint, much closer than any two
    # different examples of the pool are to each other (about 1e-4 of the scale in this tiny network)
    for position, pool_index in enumerate(COPIED):
        np.testing.assert_allclose(extended.scores[..., n + position], extended.scores[..., pool_index],
                                   rtol=0, atol=1e-6 * scale)
    fresh = extended.scores[..., n + 2]
    assert min(np.abs(fresh - extended.scores[..., i]).max() for i in range(n)) > 1e-5 * scale
    if method == "tracin":  # a gradient dot product: the pool's columns are the collection's (replayed run)
        np.testing.assert_allclose(extended.scores[..., :n], original.scores, rtol=0, atol=1e-6 * scale)

def test_features_for_refuses_what_it_cannot_replay(collected, tmp_path):
    config, folder = collected["config"], collected["dir"]
    other = CollectConfig(**{**config.__dict__, "optim": OptimConfig(lr=0.2)})
    with pytest.raises(ValueError, match="collected with other settings \\(optim differ\\)"):
        collect_added(other, folder / "runs.npz", collected["new"], progress=False, overwrite=True)
    with pytest.raises(ValueError, match="give the collection's --scores"):
        collect_added(CollectConfig(**{**config.__dict__, "scores": ()}), folder / "runs.npz", collected["new"])
    with pytest.raises(FileNotFoundError, match="collect the runs first"):
        collect_added(config, tmp_path / "none.npz", collected["new"])
    with pytest.raises(ValueError, match="runs\\+new.npz exists; pass overwrite"):
        collect_added(config, folder / "runs.npz", collected["new"])
    tampered = Runs.load(folder / "runs.npz")
    Runs.create(tampered.curricula, tampered.losses * 1.01, tampered.n_train, tampered.train_ids,
                tampered.test_ids, tampered.meta).save(tmp_path / "runs.npz")
    with pytest.raises(ValueError, match="does not reproduce its logged losses"):
        collect_added(config, tmp_path / "runs.npz", collected["new"], progress=False)
    unknown = write_jsonl(tmp_path / "odd.jsonl", [{"id": "odd", "text": "meh", "label": 7}])
    with pytest.raises(ValueError, match="label\\(s\\) \\['7'\\] are not among the collection's labels"):
        collect_added(config, folder / "runs.npz", unknown, progress=False, overwrite=True)
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"id": "ex1", "text": "meh", "label": 0}])
    with pytest.raises(ValueError, match="ids \\['ex1'\\] are already in the training pool"):
        collect_added(config, folder / "runs.npz", clash, progress=False, overwrite=True)
    assert added_path_for(folder / "runs.npz", clash) == folder / "runs+clash.npz"
    assert not (folder / "runs+clash.npz").exists()


def test_cli_features_for_then_features_fit_and_compare_with_a_new_example(collected, tmp_path, capsys):
    folder = tmp_path
    common = ["collect", "--model", str(collected["model"]), "--train", str(collected["train"]), "--test",
              str(collected["test"]), "--id-field", "id", "--runs", "2", "--batch-size", "4", "--epochs", "2",
              "--lr", "0.1", "--scores", "tracin", "--score-params", "head", "--quiet", "--threads", "1",
              "--out", str(folder / "runs.npz")]
    assert cli.main(common) == 0
    assert cli.main(common + ["--features-for", str(collected["new"])]) == 0
    printed = capsys.readouterr().out
    assert "the 3 added examples are training indices 12..14, used by no run" in printed
    assert cli.main(["features", str(folder / "runs+new.npz"), "--scores", str(folder / "runs+new.scores.npz"),
                     "--out", str(folder / "featured.npz")]) == 0
    assert cli.main(["fit", "--train", str(folder / "featured.npz"), "-m", "bayes-grid", "-o", "num_draws=100",
                     "--out", str(folder / "posterior.nc")]) == 0
    assert "3 pool example(s) appear in no run: their effects come from the features" in capsys.readouterr().out
    assert cli.main(["compare", "--simulator", str(folder / "posterior.nc"), "--curricula",
                     f"{folder / 'featured.npz'}:0", "--insert", "14", "--at-steps", "0", "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    inserted = comparison["candidates"][1]
    assert len(comparison["candidates"]) == 2 and "+14" in inserted["label"]
    assert comparison["unseen_examples"] == {comparison["candidates"][0]["label"]: 0, inserted["label"]: 1}
    low, high = inserted["final"]["difference_interval"]
    assert low < inserted["final"]["difference"] < high
