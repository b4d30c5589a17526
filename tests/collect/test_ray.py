"""Collecting on Ray: the same runs file as a local collection, also when an actor is killed."""

import threading
import time

import numpy as np
import pytest

from bayes_simfluence.collect import CollectConfig, OptimConfig, collect
from bayes_simfluence.collect.ray_runs import NAMESPACE, RayOptions
from bayes_simfluence.runs import Runs

from collect_fixtures import sentiment_files, tiny_bert

ray = pytest.importorskip("ray")


def _config(directory):
    train, test = sentiment_files(directory)
    return CollectConfig(model=tiny_bert(directory, dropout=0.1), train=train, test=test, id_field="id", runs=6,
                         batch_size=4, epochs=2, optim=OptimConfig(lr=0.1), scores=("tracin",))


def test_ray_collection_equals_the_local_one_and_survives_a_killed_actor(local_ray, tmp_path):
    config = _config(tmp_path)
    local = collect(config, tmp_path / "local.npz", progress=False, threads=1)
    killed = []

    def kill_the_first_actor() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith("collect-")]
            if names:
                ray.kill(ray.get_actor(names[0], namespace=NAMESPACE), no_restart=False)
                killed.append(names[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_actor)
    killer.start()
    on_ray = collect(config, tmp_path / "ray.npz", progress=False, threads=1,
                     ray=RayOptions(actors=2, cpus_per_run=1, max_retries=2))
    killer.join()
    assert killed, "no actor was found to kill"
    np.testing.assert_array_equal(on_ray.losses, local.losses)
    np.testing.assert_array_equal(on_ray.curricula, local.curricula)
    np.testing.assert_array_equal(Runs.load(tmp_path / "ray.npz").losses, local.losses)
    local_scores = np.load(tmp_path / "local.scores.npz")["tracin_scores"]
    np.testing.assert_array_equal(np.load(tmp_path / "ray.scores.npz")["tracin_scores"], local_scores)
    assert not ray.util.list_named_actors(all_namespaces=True)  # the collection's actors are gone


def test_cli_collects_on_ray(local_ray, tmp_path, capsys):
    from bayes_simfluence import cli

    config = _config(tmp_path)
    assert cli.main(["collect", "--model", config.model, "--train", config.train, "--test", config.test,
                     "--id-field", "id", "--runs", "2", "--batch-size", "4", "--epochs", "1", "--ray",
                     "--workers", "2", "--quiet", "--out", str(tmp_path / "cli.npz")]) == 0
    assert "wrote" in capsys.readouterr().out and Runs.load(tmp_path / "cli.npz").n_runs == 2


def test_bad_ray_options_are_refused():
    with pytest.raises(ValueError, match="actors must be >= 1"):
        RayOptions(actors=0)
    with pytest.raises(ValueError, match="gpus_per_run"):
        RayOptions(gpus_per_run=-1)
