import numpy as np
import pytest

from terrasynth.classes import IGNORE_INDEX, WORLDCOVER, load_remap, load_scheme, shipped_remaps, shipped_schemes
from terrasynth.errors import UserError


def test_worldcover_codes_indices_and_colours():
    assert WORLDCOVER.codes == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
    codes = np.array([[0, 10], [95, 100]], np.uint8)
    idx = WORLDCOVER.to_indices(codes)
    assert idx.tolist() == [[IGNORE_INDEX, 0], [9, 10]]
    assert WORLDCOVER.to_codes(idx).tolist() == codes.tolist()
    assert tuple(WORLDCOVER.colourize(codes)[0, 1]) == (0, 100, 0)  # tree cover #006400
    assert WORLDCOVER.colormap()[50][:3] == (0xFA, 0, 0)


def test_unknown_codes_are_listed():
    with pytest.raises(UserError, match=r"\[7, 200\]"):
        WORLDCOVER.check_codes(np.array([10, 7, 200], np.uint8), "x.tif")


def test_shipped_schemes_and_remaps_load():
    assert {"worldcover", "dronedeploy", "loveda", "flair"} <= set(shipped_schemes())
    for name in shipped_remaps():
        r = load_remap(name)
        assert r.target.name == "worldcover"
        # total: every source code (incl. nodata) maps to a valid target code
        src = np.array(sorted(r.source.valid_codes()), np.uint8)
        assert set(r.apply(src, "t").tolist()) <= WORLDCOVER.valid_codes()


def test_colour_decoding_flair():
    flair = load_scheme("flair")
    rgb = np.array([[[0xDB, 0x0E, 0x9A], [0x15, 0x53, 0xAE]]], np.uint8)
    assert flair.colours_to_codes(rgb, "m.png").tolist() == [[1, 5]]
    with pytest.raises(UserError, match="#010203"):
        flair.colours_to_codes(np.array([[[1, 2, 3]]], np.uint8), "m.png")


def test_user_scheme_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\nnodata: 0\nclasses:\n  - {code: 1, name: a, colour: '#ff0000'}\n")
    s = load_scheme(str(p))
    assert s.codes == [1] and s.nodata == 0
    with pytest.raises(UserError, match="not found"):
        load_scheme("nope")


def test_remap_must_be_total(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("source: dronedeploy\ntarget: worldcover\nmapping: {0: 50}\n")
    with pytest.raises(UserError, match="not mapped"):
        load_remap(str(p))
