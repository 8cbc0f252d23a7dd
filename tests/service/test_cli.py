"""The command line end to end: split, train, predict, eval on the synthetic dataset."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.conftest import REPO, SAM2_TINY_CONFIG
from worker.cli.main import main
from worker.contract.store import ModelDir
from worker.labelstudio.results import decode_mask
from worker.pipeline.checkpoint import rollback


def test_split_train_predict_eval(synthetic_dir, tmp_path, capsys):
    split = tmp_path / "split.json"
    models = tmp_path / "models"
    assert main(["split", str(synthetic_dir), "--out", str(split), "--test-fraction", "0.25"]) == 0
    parts = json.loads(split.read_text())
    assert not set(parts["train"]) & set(parts["test"])
    grouped = tmp_path / "grouped.json"
    assert main(["split", str(synthetic_dir), "--out", str(grouped), "--group", r"_(\d+)\."]) == 0
    together = json.loads(grouped.read_text())  # crack_007, clean_007, ... stay together

    def numbers(keys):
        return {key.rsplit("_", 1)[1].split(".")[0] for key in keys}

    assert together["test"] and not numbers(together["train"]) & numbers(together["test"])
    assert "groups among 72 images" in capsys.readouterr().out

    common = ["--model-dir", str(models)]
    train = [
        "train",
        str(synthetic_dir),
        *common,
        "--background-class",
        "Clean",
        "--split",
        str(split),
        "--epochs",
        "6",
        "--image-size",
        "80",
        "--input",
        "rgb",
        "--batch-size",
        "16",
        "--device",
        "cpu",
    ]
    assert main(train) == 0
    assert ModelDir(models).current_version() == "v0001"
    said = capsys.readouterr().out
    assert "version v0001 is current" in said
    assert "near-duplicates joined" in said  # the validation share's groups

    out = tmp_path / "tasks.json"
    overlays = tmp_path / "overlays"
    spot_dir = synthetic_dir / "Spot"
    predict = [
        "predict",
        str(spot_dir),
        *common,
        "--out",
        str(out),
        "--overlays",
        str(overlays),
        "--label-config",
        str(REPO / "label_config.xml"),
    ]
    assert main(predict) == 0
    assert "no SAM2 checkpoint configured" in capsys.readouterr().err
    tasks = json.loads(out.read_text())
    images = sorted(p for p in spot_dir.iterdir() if p.is_file())
    assert len(tasks) == len(images)
    for task in tasks:
        prediction = task["predictions"][0]
        assert prediction["model_version"] == "v0001"
        width, height = Image.open(task["data"]["image"]).size
        for region in prediction["result"]:
            assert region["to_name"] == "image"
            if region["type"] == "brushlabels":
                assert region["from_name"] == "mask"
                assert (region["original_width"], region["original_height"]) == (width, height)
                mask = decode_mask(region["value"]["rle"], width, height)
                assert mask.any()
                assert region["meta"]["segmenter"] == "cam"
    assert len(list(overlays.glob("*.png"))) == len(images)

    report_path = tmp_path / "report.json"
    evaluate = [
        "eval",
        str(synthetic_dir),
        *common,
        "--background-class",
        "Clean",
        "--split",
        str(split),
        "--out",
        str(report_path),
        "--report",
        str(tmp_path / "report"),
        "--clicks",
        "2",
    ]
    assert main(evaluate) == 0
    printed = capsys.readouterr().out
    assert "accept rate" in printed and "mIoU" in printed and "NoC85" in printed
    report = json.loads(report_path.read_text())
    assert report["images"] == len(parts["test"])
    for key in (
        "accuracy",
        "miou",
        "miou_given_class",
        "per_class",
        "dice",
        "accept_rate",
        "accept_rate_given_class",
        "false_mask_rate",
        "labelling_minutes",
    ):
        assert key in report
    assert set(report["per_class"]) == {"Scratch", "Spot"}
    assert report["model_version"] == "v0001" and report["segmenter"] == "cam"
    clicks = report["clicks"]
    assert clicks["segmenter"] == "cam" and clicks["objects"] > 0
    assert set(clicks["per_class"]) <= {"Scratch", "Spot"} and len(clicks["miou_after"]) == 2
    assert 1 <= clicks["noc_50"] <= 2 and 0 <= clicks["accepted_at_one_click"] <= 1
    assert main([*evaluate[:-2], "--clicks", "-1"]) == 2
    picture = Image.open(tmp_path / "report" / "report.png")
    assert picture.width >= 800 and picture.height > 200


@pytest.mark.slow
def test_predict_with_sam2_checkpoint(trained_model_dir, sam2_checkpoint, synthetic_dir, tmp_path):
    out = tmp_path / "tasks.json"
    image = next((synthetic_dir / "Scratch").glob("*.png"))
    args = [
        "predict",
        str(image),
        "--model-dir",
        str(trained_model_dir),
        "--out",
        str(out),
        "--sam2-config",
        SAM2_TINY_CONFIG,
        "--sam2-checkpoint",
        str(sam2_checkpoint),
    ]
    assert main(args) == 0
    (task,) = json.loads(out.read_text())
    width, height = Image.open(image).size
    for region in task["predictions"][0]["result"]:
        if region["type"] == "brushlabels":
            assert region["meta"]["segmenter"] == "sam2"
            assert decode_mask(region["value"]["rle"], width, height).shape == (height, width)


def test_errors_are_one_clear_line(trained_model_dir, tmp_path, capsys):
    assert (
        main(
            [
                "predict",
                str(tmp_path),
                "--model-dir",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "o.json"),
            ]
        )
        == 2
    )
    assert "camsam train" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing"), "--model-dir", str(tmp_path)]) == 2
    assert "neither a dataset folder" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert (
        main(
            [
                "predict",
                str(bad),
                "--model-dir",
                str(trained_model_dir),
                "--out",
                str(tmp_path / "o.json"),
            ]
        )
        == 2
    )
    assert "cannot decode image" in capsys.readouterr().err


def test_demo_runs_and_judges_only_images_it_did_not_train_on(tmp_path):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "2"]) == 0
    assert (tmp_path / "demo" / "predictions.json").is_file()
    split = json.loads((tmp_path / "demo" / "split.json").read_text())
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["images"] == len(split["test"]) and split["train"]
    judged = {d["key"] for d in report["images_detail"]}
    assert judged == set(split["test"])


def test_preannotate_writes_a_prediction_for_each_task_not_yet_predicted(
    trained_model_dir, synthetic_dir, label_studio, tmp_path, monkeypatch, capsys
):
    models = tmp_path / "models"
    (models / "9").mkdir(parents=True)
    for item in trained_model_dir.iterdir():
        (models / "9" / item.name).symlink_to(item)
    label_studio.label_config = (REPO / "tests" / "data" / "synthetic_config.xml").read_text()
    spots = sorted((synthetic_dir / "Spot").glob("*.png"))
    label_studio.tasks = [
        {"id": 1, "data": {"image": f"/data/upload/Spot/{spots[0].name}"}, "predictions": []},
        {"id": 2, "data": {"image": "/data/upload/Spot/missing.png"}, "predictions": []},
        {  # already predicted by the current version: Label Studio has it, nothing to do
            "id": 3,
            "data": {"image": f"/data/upload/Spot/{spots[1].name}"},
            "predictions": [{"model_version": "v0001", "result": []}],
        },
        {"id": 4, "data": {"image": f"/data/upload/Spot/{spots[2].name}"}, "predictions": []},
    ]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret")
    argv = ["preannotate", "--project", "9", "--url", label_studio.url, "--model-dir", str(models)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 predictions written, 1 skipped" in out and "1 tasks failed" in out
    written = sorted(label_studio.predictions, key=lambda p: p["task"])
    assert [p["task"] for p in written] == [1, 4]
    for prediction in written:
        assert prediction["model_version"] == "v0001"
        (choice,) = [r for r in prediction["result"] if r["type"] == "choices"]
        assert choice["from_name"] == "defect" and choice["value"]["choices"] == ["Spot"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong")
    assert main(argv) == 2  # refused by Label Studio: one clear line, no traceback
    assert "camsam: error:" in capsys.readouterr().err


def test_rank_lists_images_most_informative_first(trained_model_dir, synthetic_dir, capsys):
    assert (
        main(
            [
                "rank",
                str(synthetic_dir / "Spot"),
                str(synthetic_dir / "Clean"),
                "--model-dir",
                str(trained_model_dir),
            ]
        )
        == 0
    )
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    scores = [float(line[0]) for line in lines]
    assert len(lines) == 48 and scores == sorted(scores)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_versions_and_rollback(trained_model_dir, tmp_path, capsys):
    import shutil

    models = tmp_path / "models" / "3"
    shutil.copytree(trained_model_dir, models)
    for name in ("v0002.pt", "v0002.json"):
        shutil.copy(
            models / "versions" / name.replace("v0002", "v0001"), models / "versions" / name
        )
    rollback(ModelDir(models), "v0002")
    common = ["--model-dir", str(tmp_path / "models"), "--project", "3"]
    assert main(["versions", *common]) == 0
    out = capsys.readouterr().out
    assert "* v0002" in out and "  v0001" in out and "val acc" in out
    assert main(["rollback", "v0001", *common]) == 0
    assert ModelDir(models).current_version() == "v0001"
    assert main(["rollback", "v0009", *common]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["versions", "--json", *common]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed["versions"] if v["current"]] == ["v0001"]


@pytest.mark.slow
def test_bench_runs_and_writes_the_figures_a_script_reads(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--images", "2", "--size", "128", "--repeat", "1", "--json", str(out)]
    assert main(argv) == 0
    assert "overhead_ratio" in capsys.readouterr().out
    report = json.loads(out.read_text())
    for key in ("overhead_ratio", "click_ratio", "images_per_s"):
        assert report[key] > 0
    assert set(report["stages_ms"]) >= {
        "decode",
        "gradcam",
        "gradcam_pytorch_grad_cam",
        "sam2_embedding",
        "rle",
    }
    assert report["cam"]["over_one_pass_cam"] > 0 and report["cam_contrast"]["overhead_ratio"] > 0
    sam2, decode = report["sam2"], report["stages_ms"]["sam2_decode_per_class"]
    # one decode per (masked) class is a model's cost the plain ratio leaves out
    with_decode = sam2["bare_models_ms_per_image"] + decode
    assert sam2["bare_with_decode_ms_per_image"] == pytest.approx(with_decode, abs=0.02)
    assert 0 < sam2["over_models_with_decode"] < sam2["overhead_ratio"]
    if report["web_rss_mb"] is not None:  # with a redis-server: the real web process
        assert report["queue_roundtrip_ms_p50"] > 0 and report["web_loads_torch"] is False


def test_the_memory_bench_measures_each_case_in_a_fresh_process(trained_model_dir):
    from worker.bench.memory import format_rows, memory_figures

    rows = memory_figures(trained_model_dir, cases=(("JPEG", 1200, 2, 300), ("PNG", 700, 1, 0)))
    assert [(r["format"], r["batch"], r["work_side"]) for r in rows] == [
        ("JPEG", 2, 300),
        ("PNG", 1, 0),
    ]
    for row in rows:
        assert row["masks"] == row["batch"] and row["rle_kb"] > 0 and row["peak_growth_mb"] >= 0
    assert "JPEG 1200x1200 x2 (work side 300)" in format_rows(rows)
    assert "(work side full size)" in format_rows(rows)
