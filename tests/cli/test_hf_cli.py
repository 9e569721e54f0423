"""The CLI with Hugging Face transformers models: ``model.student=hf:DIR``, text data, ``--format hf``.

Offline end to end, on directories the tests write (tests/hf_helpers.py): a tiny BERT with a
WordLevel tokenizer trained on a tiny text DatasetDict, and a tiny ViT with an image processor
trained on a Fashion-MNIST subset. ``gpd train``, ``gpd eval RUN``, ``gpd export RUN --format hf``
and ``gpd eval`` of the exported directory; the directory loads with ``AutoModelFor...`` and gives
the logits of ``gpd.load_student``. Then the bad input of each new key: one line, exit code 2,
nothing written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import gpd
from bad_input import fails, untouched
from gpd.cli.main import main
from gpd.inputs import call_model
from gpd.io.student import student_payload
from gpd.models import create_model
from gpd.outputs import logits_of
from helpers import needs_fashion_mnist

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

import hf_helpers  # noqa: E402  (after the skips: it needs transformers)

pytestmark = pytest.mark.usefixtures("torch_single_thread")
QUICK = ["train.epochs=1", "train.batch_size=8", "train.device=cpu", "train.grad_probe_every=0"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_cli")
    return {
        "root": root,
        "bert": hf_helpers.save_bert(root / "bert"),
        "text": hf_helpers.save_text_dataset(root / "text"),
        "vit": hf_helpers.save_vit(root / "vit"),
    }


@pytest.fixture(scope="module")
def bert_run(folders) -> Path:
    run = folders["root"] / "bert_run"
    args = [f"model.student=hf:{folders['bert']}", "data.name=hf_disk", f"data.root={folders['text']}"]
    assert main(["train", *args, *QUICK, f"output_dir={run}"]) == 0
    return run


def _tokenized(folder: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(call_model(model.eval(), batch))


def test_bert_trains_evaluates_and_exports_a_save_pretrained_directory(bert_run, capsys) -> None:
    assert main(["eval", str(bert_run), "train.device=cpu"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["export", str(bert_run), "--format", "hf"]) == 0
    out = capsys.readouterr().out
    folder = bert_run / "student_hf"
    assert f"wrote {folder}" in out and "from_pretrained matches the student" in out, out
    assert {"config.json", "model.safetensors", "tokenizer.json", "gpd_config.yaml"} <= {
        p.name for p in folder.iterdir()
    }
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos", "2": "topic"}
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    assert type(exported) is transformers.BertForSequenceClassification
    batch = _tokenized(folder, ["good movie", "the plot is very awful indeed", "a film"])
    torch.testing.assert_close(_logits(exported, batch), _logits(gpd.load_student(bert_run / "student.pt"), batch))
    assert main(["eval", str(folder), "train.device=cpu"]) == 0
    assert "on 12 hf_disk texts" in capsys.readouterr().out


def test_an_export_is_not_overwritten_unless_asked(bert_run, capsys) -> None:
    folder = bert_run / "student_hf"
    if not folder.exists():
        assert main(["export", str(bert_run), "--format", "hf"]) == 0
    with untouched(folder):
        assert "already exists" in fails(["export", str(bert_run), "--format", "hf"], capsys)
    other = bert_run.parent / "not_an_export"
    other.mkdir(exist_ok=True)
    (other / "notes.txt").write_text("mine")
    with untouched(other):
        err = fails(["export", str(bert_run), "--format", "hf", "--output", str(other), "--overwrite"], capsys)
    assert "not a transformers directory" in err
    assert main(["export", str(bert_run), "--format", "hf", "--overwrite"]) == 0


def test_a_head_of_another_class_count_is_reinitialised_with_one_line(folders, capsys) -> None:
    """Also: model.kwargs overrides a config field; an hf: static teacher (KD, no dynamic teacher)."""
    two = hf_helpers.save_bert(folders["root"] / "bert2", num_labels=2)
    run = folders["root"] / "head_run"
    args = [f"model.student=hf:{two}", "data.name=hf_disk", f"data.root={folders['text']}", "gpd.enabled=false"]
    teacher = [f"teacher.model=hf:{folders['bert']}", "kd.method=kd"]
    assert main(["train", *args, *teacher, *QUICK, "model.kwargs.hidden_dropout_prob=0.0", f"output_dir={run}"]) == 0
    out = capsys.readouterr().out
    assert f"teacher.model: hf:{folders['bert']}: loaded 41 of 41 tensors" in out, out
    line = next(line for line in out.splitlines() if line.startswith("model.student:"))
    assert "loaded 39 of 41 tensors; re-initialised the classifier" in line, line
    assert "classifier.weight (2, 32) -> (3, 32)" in line and "classifier.bias (2,) -> (3,)" in line
    assert gpd.load_student(run).config.hidden_dropout_prob == 0.0


@needs_fashion_mnist
def test_vit_trains_on_fashion_mnist_with_its_image_processor_and_exports(folders, capsys) -> None:
    run = folders["root"] / "vit_run"
    args = [f"model.student=hf:{folders['vit']}", "data.name=fashion_mnist", "data.train_subset=64"]
    assert main(["train", *args, "data.test_subset=32", *QUICK, f"output_dir={run}"]) == 0
    assert "test images of 1x16x16" in capsys.readouterr().out  # the image processor's size
    student = gpd.load_student(run)
    assert type(student) is transformers.ViTForImageClassification
    assert main(["export", str(run), "--format", "hf"]) == 0
    folder = run / "student_hf"
    assert (folder / "preprocessor_config.json").is_file()
    exported = transformers.AutoModelForImageClassification.from_pretrained(folder)
    images = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(exported, images), _logits(student, images))
    assert main(["eval", str(folder), "train.device=cpu"]) == 0
    assert "fashion_mnist images" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ bad input


def _train_fails(args: list[str], tmp_path: Path, capsys, *watched: Path) -> str:
    run = tmp_path / "run"
    capsys.readouterr()  # the progress bars of building the inputs, not gpd's output
    with untouched(*watched):
        err = fails(["train", *args, *QUICK, f"output_dir={run}"], capsys)
    assert not run.exists()
    return err


def test_an_hf_path_that_is_missing_or_not_a_transformers_directory(folders, tmp_path, capsys) -> None:
    err = _train_fails([f"model.student=hf:{tmp_path / 'nowhere'}"], tmp_path, capsys)
    assert "no such directory" in err and "model.student" in err
    (tmp_path / "plain").mkdir()
    err = _train_fails([f"teacher.model=hf:{tmp_path / 'plain'}", "kd.method=kd"], tmp_path, capsys)
    assert "not a transformers directory" in err and "teacher.model" in err


def test_a_directory_that_needs_remote_code_is_refused(folders, tmp_path, capsys) -> None:
    remote = hf_helpers.save_bert(tmp_path / "remote", tokenizer=True)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_mine.MineModel"}
    (remote / "config.json").write_text(json.dumps(config))
    args = [f"model.student=hf:{remote}", "data.name=hf_disk", f"data.root={folders['text']}"]
    err = _train_fails(args, tmp_path, capsys, remote)
    assert "model.trust_remote_code=true" in err


@pytest.mark.parametrize(
    "model, needle",
    [("vit", "is an image model but hf_disk holds text"), ("resnet8", "is not a text model but hf_disk holds text")],
)
def test_an_image_model_on_text_data(folders, model, needle, tmp_path, capsys) -> None:
    student = f"hf:{folders['vit']}" if model == "vit" else model
    args = [
        f"model.student={student}",
        "data.name=hf_disk",
        f"data.root={folders['text']}",
        f"data.tokenizer={folders['bert']}",
    ]
    assert needle in _train_fails(args, tmp_path, capsys)


def test_a_text_model_on_image_data(folders, tmp_path, capsys) -> None:
    datasets = pytest.importorskip("datasets")
    images = tmp_path / "images"
    split = datasets.Dataset.from_dict({"image": [[[0, 1], [2, 3]]] * 4, "label": [0, 1, 2, 0]})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(images))
    err = _train_fails(
        [f"model.student=hf:{folders['bert']}", "data.name=hf_disk", f"data.root={images}"], tmp_path, capsys
    )
    assert "the student is a text model but" in err and "holds images" in err, err
    args = [f"model.student=hf:{folders['bert']}", "data.name=digits"]
    assert "is a text model but digits holds images" in _train_fails(args, tmp_path, capsys)


def test_a_missing_text_column_and_no_tokenizer(folders, tmp_path, capsys) -> None:
    args = [f"model.student=hf:{folders['bert']}", "data.name=hf_disk", f"data.root={folders['text']}"]
    err = _train_fails([*args, "data.text_key=sentence"], tmp_path, capsys, folders["text"])
    assert "no text column 'sentence' (data.text_key)" in err
    bare = hf_helpers.save_bert(tmp_path / "bare", tokenizer=False)
    err = _train_fails([f"model.student=hf:{bare}", *args[1:]], tmp_path, capsys)
    assert "no tokenizer in" in err and "data.tokenizer" in err
    assert main(["train", "--dry-run", f"model.student=hf:{bare}", *args[1:], f"data.tokenizer={folders['bert']}"]) == 0


def test_transformers_not_installed(folders, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    err = _train_fails([f"model.student=hf:{folders['bert']}"], tmp_path, capsys)
    assert "pip install 'gpd[hf]'" in err


def test_format_hf_needs_a_transformers_student(tmp_path, capsys) -> None:
    source = tmp_path / "student.pt"
    torch.save(student_payload(create_model("resnet8", 10, 1), data="fashion_mnist"), source)
    with untouched(tmp_path):
        assert "--format hf exports a transformers student" in fails(["export", str(source), "--format", "hf"], capsys)


def test_a_model_kwarg_that_is_no_config_field(folders, tmp_path, capsys) -> None:
    args = [f"model.student=hf:{folders['bert']}", "data.name=hf_disk", f"data.root={folders['text']}"]
    err = _train_fails([*args, "model.kwargs.no_such_field=1"], tmp_path, capsys, folders["bert"])
    assert "model.kwargs 'no_such_field' is not a field of its BertConfig" in err


def test_the_command_line_example_of_docs_huggingface_runs(tmp_path, monkeypatch, capsys) -> None:
    """The bash block of docs/huggingface.md, command by command, on a tiny BERT and text set at its paths."""
    import re
    import shlex

    doc = Path(__file__).resolve().parents[2] / "docs" / "huggingface.md"
    block = re.search(r"```bash\n(.*?)```", doc.read_text(), flags=re.S)
    assert block is not None
    commands = [shlex.split(line.split("#")[0]) for line in block.group(1).splitlines() if line.startswith("gpd ")]
    assert [c[1] for c in commands] == ["train", "eval", "export", "eval"]
    monkeypatch.chdir(tmp_path)
    hf_helpers.save_bert(tmp_path / "models" / "tiny-bert")
    hf_helpers.save_text_dataset(tmp_path / "data" / "reviews")
    for command in commands:
        extra = ["train.batch_size=8", "train.device=cpu", "train.grad_probe_every=0"] if command[1] == "train" else []
        assert main([*command[1:], *extra]) == 0, command
    assert "test accuracy" in capsys.readouterr().out
    assert (tmp_path / "runs" / "bert" / "student_hf" / "config.json").is_file()
