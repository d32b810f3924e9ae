"""benchmarks/rd.py against published anchor curves: loading, BD-rates, PSNR at fixed rates."""
from __future__ import annotations

import json

import pytest

from benchmarks import rd


def _curve(bpp, psnr):
    return {"bpp": list(bpp), "psnr-rgb": list(psnr), "ms-ssim-rgb": [0.9] * len(bpp),
            "encoding_time": [0.0] * len(bpp), "decoding_time": [0.0] * len(bpp)}


BPP = [0.2, 0.4, 0.8, 1.6, 3.2]
PSNR = [28.0, 31.0, 34.0, 37.0, 40.0]


def test_anchor_bd_rates_and_psnr_at_each_rate(tmp_path):
    (tmp_path / "same.json").write_text(json.dumps({"name": "Same", "results": _curve(BPP, PSNR)}))
    (tmp_path / "better.json").write_text(json.dumps({"name": "B", "results": _curve([b * 0.8 for b in BPP], PSNR)}))
    anchors = rd.load_anchors(tmp_path)
    assert list(anchors) == ["better", "same"]
    ours = {"results": {**_curve(BPP, PSNR), "quality": [1, 2, 3, 4, 5]}}
    summary = rd.summarize({"mine": ours}, {}, {}, anchors)
    vs = summary["codecs"]["mine"]["bd_rate_psnr_vs_anchor"]
    assert vs["same"] == pytest.approx(0.0, abs=1e-6)
    assert vs["better"] == pytest.approx(25.0, rel=1e-3)  # 1/0.8: a quarter more bits
    # 1.5 bpp lies between the 0.8 and 1.6 points; the anchors get rows of their own
    at = summary["anchors"]["same"]["psnr_at_bpp"]
    assert 34.0 < at["1.5"] < 37.0 and at["1.0"] < at["1.5"]
    assert "same (published)" in rd.markdown_table(summary)
    assert "+25.0 %" in rd.anchor_table(summary)


@pytest.mark.parametrize("content", ['{"results": {"bpp": [1, 2]}}', '{"name": "x"}'])
def test_a_file_that_is_not_a_curve_is_an_error_naming_it(tmp_path, content):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ValueError, match="bad.json"):
        rd.load_anchors(tmp_path)


def test_an_empty_anchor_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no anchor curve"):
        rd.load_anchors(tmp_path)


def test_avif_as_tuned_for_size_uses_speed_2_and_444():
    codec, note = rd.make_codec("avif-444-s2")
    if codec is None:
        pytest.skip(note)
    assert codec.options(50) == {"quality": 50, "speed": 2, "subsampling": "4:4:4"}
    assert rd.make_codec("avif")[0].options(50)["speed"] == 6
