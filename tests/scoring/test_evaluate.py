import base64
import re

import cv2
import numpy as np
import pytest

from helpers import photo, write_pair
from upres.cli import main
from upres.errors import EvalError
from upres.io import images
from upres.scoring import metrics
from upres.scoring.evaluate import evaluate_folders


@pytest.fixture
def val_root(tmp_path):
    """val/lr + val/hr (two real photo crops) and test/ images without ground truth."""
    img = photo("astronaut")
    for i in range(2):
        write_pair(tmp_path / "val", ".", f"v{i}", img[100 + 40 * i:164 + 40 * i, 200:264])
    images.write_image(tmp_path / "test" / "a.png", img[:20, :28])
    return tmp_path


def test_eval_numbers_match_independent_computation(val_root, capsys):
    root = val_root
    val = root / "val"
    pred = root / "pred"
    for p in images.list_images(val / "lr"):
        lr = images.read_image(p)
        images.write_image(pred / p.name, np.repeat(np.repeat(lr, 4, 0), 4, 1))  # nearest x4
    csv_path = root / "s.csv"
    assert main(["eval", "--pred", str(pred), "--gt", str(val / "hr"), "--lr", str(val / "lr"),
                 "--csv", str(csv_path)]) == 0
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    assert rows[0] == ["name", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim"]
    for row in rows[1:-1]:
        gt = images.read_image(val / "hr" / f"{row[0]}.png").astype(np.float64)
        near = images.read_image(pred / f"{row[0]}.png").astype(np.float64)
        mse = np.mean((gt[4:-4, 4:-4] - near[4:-4, 4:-4]) ** 2)
        assert float(row[1]) == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-4)
    assert rows[-1][0] == "mean"
    assert float(rows[-1][1]) == pytest.approx(np.mean([float(r[1]) for r in rows[1:-1]]), abs=1e-3)
    assert "mean PSNR" in capsys.readouterr().out


def test_eval_mismatches_name_the_files(val_root, capsys):
    root = val_root
    with pytest.raises(EvalError, match=r"v1.png: no counterpart"):
        evaluate_folders(root / "test", root / "val/hr")
    images.write_image(root / "p2/v0.png", np.zeros((10, 10, 3), np.uint8))
    images.write_image(root / "p2/v1.png", np.zeros((10, 10, 3), np.uint8))
    code = main(["eval", "--pred", str(root / "p2"), "--gt", str(root / "val/hr")])
    assert code == 2
    assert "v0.png: size 10x10 differs from" in capsys.readouterr().err




def test_report_command_numbers_match_eval_and_crops_exist(val_root, capsys):
    root = val_root
    val = root / "val"
    preds = {}
    for name, factor in (("near", 0), ("blur", 1)):
        folder = root / name
        for p in images.list_images(val / "lr"):
            lr = images.read_image(p)
            up = np.repeat(np.repeat(lr, 4, 0), 4, 1)
            if factor:
                up = ((up.astype(int) + np.roll(up, 1, 1)) // 2).astype(np.uint8)
            images.write_image(folder / p.name, up)
        preds[name] = folder
    out = root / "report"
    code = main(["report", "--pred", f"near={preds['near']}", "--pred", str(preds["blur"]),
                 "--gt", str(val / "hr"), "--lr", str(val / "lr"), "-o", str(out)])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {out / 'index.html'}"
    page = (out / "index.html").read_text()
    assert "<th colspan=2>near</th><th colspan=2>blur</th>" in page
    for name in ("near", "blur"):
        rows = [r.split(",") for r in (out / f"scores_{name}.csv").read_text().splitlines()[1:]]
        for row in rows[:-1]:
            gt = images.read_image(val / "hr" / f"{row[0]}.png")
            pred = images.read_image(preds[name] / f"{row[0]}.png")
            assert float(row[1]) == pytest.approx(metrics.psnr(pred, gt, 4), abs=1e-4)
            assert f"<td>{row[1]}</td>" in page
    strips = re.findall(r"<img src='data:image/png;base64,([^']+)' alt='(v\d)'>", page)
    assert [stem for _, stem in strips] == ["v0", "v1"]  # inline: the page is self-contained
    for data, _ in strips:
        strip = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        # LR | bicubic | near | blur | ground truth, each a 2x-zoomed 64x64 window, 4 px gaps
        assert strip.shape == (128, 5 * 128 + 4 * 4, 3)
    assert "<td class=best>" in page and "PSNR (dB)" in page
    assert "href='../near/v0.png'" in page  # the full-size prediction, linked
