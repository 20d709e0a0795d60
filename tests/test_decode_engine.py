"""The running beam search (nola.decode.engine.BeamBatch): inputs with their own settings and
adapters share one batch, join it between steps and leave it when done; each answer must equal
that prompt decoded alone with its adapter merged into a fresh base (the plain single-adapter path).
"""

from __future__ import annotations

import random

import pytest
import torch

from bank_support import ADAPTERS, merged_model, save_random_adapters, tiny_base
from nola.adapters.bank import AdapterBank
from nola.decode.beam import search
from nola.decode.config import SearchSettings
from nola.decode.engine import BeamBatch, Entry
from nola.model import base_fingerprint

NAMES = ["lora_qv", "lora_mlp", "nola_a", "nola_b", "nola_paper", None]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tiny_base()
    root = save_random_adapters(base, tmp_path_factory.mktemp("engine"))
    routed = tiny_base()
    bank = AdapterBank(routed, base_fingerprint(routed))
    for name in ADAPTERS:
        bank.add(name, root / name)
    merged = {name: merged_model(base, None if name is None else root / name) for name in NAMES}
    return routed, bank, merged


def varied_jobs(count: int, seed: int, beam: int = 3):
    """Prompts of 1-24 tokens, each with its own max_tokens, length penalty, n-gram size, penalty, adapter."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        prompt = [rng.randrange(50257) for _ in range(rng.randint(1, 24))]
        settings = SearchSettings(beam=beam, max_new_tokens=rng.choice([1, 2, 5, 9, 14]),
                                  length_penalty=rng.choice([0.8, 1.0, 0.0, 1.5]),
                                  no_repeat_ngram_size=rng.choice([0, 2, 4]),
                                  repetition_penalty=rng.choice([1.0, 1.0, 1.3]),
                                  eos_ids=(50256, 628, 13, 11))
        jobs.append((prompt, settings, rng.choice(NAMES)))
    return jobs


def alone(merged, job):
    prompt, settings, name = job
    [found] = search(merged[name], [prompt], settings, batch_size=1)
    return found


def test_one_batch_of_mixed_settings_and_adapters_equals_each_prompt_alone(setup):
    routed, bank, merged = setup
    jobs = varied_jobs(44, seed=5)
    found = search(routed, [p for p, _, _ in jobs], [s for _, s, _ in jobs], batch_size=len(jobs),
                   adapters=[n for _, _, n in jobs])
    assert len({s for _, s, _ in jobs}) > 10  # many cohorts in one batch
    for job, got in zip(jobs, found):
        want = alone(merged, job)
        assert got.tokens == want.tokens, job
        assert got.finished == want.finished
        assert got.score == pytest.approx(want.score, rel=1e-4, abs=1e-5)


def run_continuously(batch, bank, jobs, seed: int, cancel: set[int] = frozenset()):
    """Admit the jobs a few at a time between steps (at random), step until every input is done."""
    answers, joined_mid_search = {}, 0
    waiting = list(enumerate(jobs))
    rng = random.Random(seed)
    with torch.inference_mode():
        while waiting or batch.cohorts:
            if waiting and (not batch.cohorts or rng.random() < 0.4):
                count = rng.randint(1, 6)
                take, waiting = waiting[:count], waiting[count:]
                joined_mid_search += bool(batch.cohorts)
                done = batch.admit([Entry(prompt, settings, index, None if name is None else bank.resolve(name))
                                    for index, (prompt, settings, name) in take])
            else:
                done = batch.step(cancelled=lambda index: index in cancel)
            for index, hypothesis in done:
                assert index not in answers
                answers[index] = hypothesis
    return answers, joined_mid_search


@pytest.mark.parametrize("compact", [True, False])
def test_inputs_joining_a_running_batch_equal_each_prompt_alone(setup, compact):
    routed, bank, merged = setup
    jobs = varied_jobs(48, seed=11)
    answers, joined = run_continuously(BeamBatch(routed, bank.routes, compact=compact), bank, jobs, seed=3)
    assert joined >= 5 and sorted(answers) == list(range(len(jobs)))
    for index, job in enumerate(jobs):
        assert answers[index].tokens == alone(merged, job).tokens, job


def test_a_longer_prompt_joining_shifts_the_running_inputs(setup):
    routed, bank, merged = setup
    short = ([7, 8, 9], SearchSettings(beam=4, max_new_tokens=12, eos_ids=(50256,)), "nola_a")
    long = (list(range(100, 160)), SearchSettings(beam=2, max_new_tokens=6, eos_ids=(50256,)), "lora_qv")
    batch = BeamBatch(routed, bank.routes, compact=True)
    with torch.inference_mode():
        done = batch.admit([Entry(short[0], short[1], "short", bank.resolve("nola_a"))])
        for _ in range(3):
            done += batch.step()
        width = batch.cache.length
        done += batch.admit([Entry(long[0], long[1], "long", bank.resolve("lora_qv"))])
        assert batch.cache.length == len(long[0]) > width  # the running input moved right
        while batch.cohorts:
            done += batch.step()
    answers = dict(done)
    assert answers["short"].tokens == alone(merged, short).tokens
    assert answers["long"].tokens == alone(merged, long).tokens


def test_cancelled_inputs_leave_without_an_answer_and_change_no_other(setup):
    routed, bank, merged = setup
    jobs = varied_jobs(20, seed=2)
    cancel = {1, 4, 9, 15}
    answers, _ = run_continuously(BeamBatch(routed, bank.routes, compact=True), bank, jobs, seed=8, cancel=cancel)
    assert sorted(answers) == list(range(len(jobs)))
    for index, job in enumerate(jobs):
        if index in cancel and job[1].max_new_tokens > 1:  # one-token answers are done at admission
            assert answers[index] is None
        elif index not in cancel:
            assert answers[index].tokens == alone(merged, job).tokens, job


def test_a_replaced_adapter_keeps_serving_its_old_version_to_running_inputs(setup, tmp_path):
    routed, bank, merged = setup
    prompt, settings = [5, 6, 7, 8], SearchSettings(beam=3, max_new_tokens=10, eos_ids=(50256,))
    save_random_adapters(tiny_base(), tmp_path, {"swap": ADAPTERS["nola_a"]}, seed=1)
    batch = BeamBatch(routed, bank.routes, compact=True)
    with torch.inference_mode():
        bank.add("swap", tmp_path / "swap")
        done = batch.admit([Entry(prompt, settings, "old", bank.resolve("swap"))])
        done += batch.step()
        save_random_adapters(tiny_base(), tmp_path / "v2", {"swap": ADAPTERS["nola_a"]}, seed=99)
        bank.add("swap", tmp_path / "v2" / "swap")  # a new version while the old one is being decoded
        done += batch.admit([Entry(prompt, settings, "new", bank.resolve("swap"))])
        while batch.cohorts:
            done += batch.step()
    answers = dict(done)
    assert answers["old"].tokens == search(merged_model(tiny_base(), tmp_path / "swap"), [prompt], settings)[0].tokens
    assert answers["new"].tokens == search(merged_model(tiny_base(), tmp_path / "v2" / "swap"), [prompt],
                                           settings)[0].tokens
    assert answers["old"].tokens != answers["new"].tokens
    bank.remove("swap")
